/// glibc's malloc was a third of the server's CPU in the stream benchmark's
/// profile (every message allocates a few small buffers across threads);
/// mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    coupond::cli::main()
}
