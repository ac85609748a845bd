//! An error with every cause it wraps, for people to read. Transport
//! errors name only the step ("transport error", "error performing TLS
//! handshake"); their sources say which certificate was refused and why.

/// `e` and its causes, each once: wrappers often repeat their source's text.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    append_causes(&mut out, e.source());
    out
}

/// Appends `next` and the causes below it to `out`, skipping any text
/// `out` already holds.
pub fn append_causes(out: &mut String, mut next: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    #[test]
    fn every_cause_once() {
        let inner = Layer("invalid peer certificate: UnknownIssuer", None);
        let repeat = Layer(
            "invalid peer certificate: UnknownIssuer",
            Some(Box::new(inner)),
        );
        let outer = Layer("transport error", Some(Box::new(repeat)));
        assert_eq!(
            super::with_causes(&outer),
            "transport error: invalid peer certificate: UnknownIssuer"
        );
    }
}
