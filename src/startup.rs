//! Wiring: connect the stores, build the services, bind the listener, and
//! run the gRPC server and the finalizer until the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::config::{redacted_url, CorsOrigins, ServeSettings, Settings};
use crate::consumer::Finalizer;
use crate::grpc::auth::{Access, RequireToken};
use crate::grpc::health::{self, DrainingHealth, Reports};
use crate::grpc::http1::ReadWholeLayer;
use crate::grpc::observe::ObserveLayer;
use crate::grpc::{AdminApi, IssuerApi};
use crate::kafka::{topics, Publisher};
use crate::proto::coupon_admin_server::CouponAdminServer;
use crate::proto::coupon_issuer_server::CouponIssuerServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::service::batcher::Batcher;
use crate::service::gauges::Gauges;
use crate::service::readiness::Readiness;
use crate::service::sweeper::Sweeper;
use crate::service::{AdminService, IssuerService, PreloadJobs};
use crate::store::postgres::finalization::IssuanceWriter;
use crate::store::{PgStore, RedisStore};
use crate::supervisor::{Kind, Spawner, Supervisor};
use tonic::transport::server::Router;
use tonic_health::pb::health_server::{Health, HealthServer};
use tower::layer::util::{Identity, Stack};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// HTTP/2 flow-control windows (see `grpc_server`).
const CONNECTION_WINDOW: u32 = 16 << 20;
const STREAM_WINDOW: u32 = 256 << 10;

/// How long shutdown waits for Kafka to take the last messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for preload jobs to stop at a chunk's end.
const JOBS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the tasks (the finalizer drains its
/// partitions for up to 10 s of this).
const TASKS_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections to the backing services, checked and migrated.
#[derive(Clone)]
pub struct Backends {
    pub pg: PgStore,
    pub redis: RedisStore,
    pub publisher: Publisher,
}

impl Backends {
    /// Connects to everything, fails fast when something does not answer,
    /// runs migrations and creates the topics.
    pub async fn connect(s: &Settings) -> anyhow::Result<Self> {
        let pg = PgStore::connect(&s.database.url, s.database.pool_size)?;
        let redis = RedisStore::open(&s.redis)?;
        redis
            .ping()
            .await
            .map_err(|e| anyhow::anyhow!("redis at {}: {e}", s.redis.location()))?;
        pg.migrate()
            .await
            .map_err(|e| anyhow::anyhow!("postgres at {}: {e:#}", redacted_url(&s.database.url)))?;
        topics::ensure(&s.kafka)
            .await
            .map_err(|e| anyhow::anyhow!("kafka at {}: {e:#}", s.kafka.brokers))?;
        let linger = s.kafka.producer_linger(s.issue.durability);
        let publisher = Publisher::new(&s.kafka, linger)?;
        Ok(Self {
            pg,
            redis,
            publisher,
        })
    }

    /// What health probes.
    pub fn readiness(&self, s: &Settings) -> Readiness {
        Readiness {
            pg: self.pg.clone(),
            redis: self.redis.clone(),
            kafka: s.kafka.clone(),
        }
    }

    /// The gauges task (consumer lag, pending per live event).
    pub fn gauges(&self, s: &Settings) -> Gauges {
        Gauges {
            pg: self.pg.clone(),
            redis: self.redis.clone(),
            kafka: s.kafka.clone(),
        }
    }

    /// The finalizer, with connections of its own to PostgreSQL (one per
    /// batch in flight).
    pub fn finalizer(&self, s: &Settings) -> anyhow::Result<Finalizer> {
        let writer = IssuanceWriter::connect(&s.database.url, s.consumer.in_flight.max(1))?;
        Finalizer::new(
            &s.kafka,
            &s.consumer,
            writer,
            self.redis.clone(),
            self.publisher.clone(),
            s.sweep.retention,
        )
    }
}

/// A bound, ready-to-run coupond server.
pub struct Application {
    listener: TcpListener,
    settings: Settings,
    serve: ServeSettings,
    backends: Backends,
}

impl Application {
    pub async fn build(settings: Settings, serve: ServeSettings) -> anyhow::Result<Self> {
        let backends = Backends::connect(&settings).await?;
        let listener = TcpListener::bind(serve.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", serve.listen))?;
        Ok(Self {
            listener,
            settings,
            serve,
            backends,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` fires: stops accepting, finishes in-flight
    /// calls, flushes the producer, lets the finalizer commit its last
    /// batch, then returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            settings,
            serve,
            backends,
        } = self;
        let addr = listener.local_addr()?;
        // The finalizer and the sweeper outlive the gRPC server: they stop
        // only after in-flight calls finished and the producer flushed, so
        // issuances answered during the drain are recorded by this process.
        let background = CancellationToken::new();
        // Whatever way this function returns, they do stop.
        let _stop_background = background.clone().drop_guard();
        let mut tasks = Supervisor::default();
        start_background(&mut tasks, &backends, &settings, &serve, &background)?;
        let services = Services::build(&backends, &settings, &shutdown, &mut tasks);
        let reporter = tonic_health::server::HealthReporter::new();
        let health_svc = DrainingHealth::new(reporter.clone(), shutdown.clone());
        let reports = Reports::Server {
            finalizer: !serve.no_consumer,
        };
        health::serving_at_start(&reporter, reports).await;
        let readiness = backends.readiness(&settings);
        let draining = shutdown.clone();
        tasks.spawn(
            "health reporter",
            health::report(reporter, readiness, reports, draining),
        );
        let router = grpc_server(&serve, &settings, &services, health_svc, tasks.spawner())?;
        tracing::info!(%addr, durability = ?settings.issue.durability, "coupond serving");
        let serving = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled());
        let (served, ended) = tasks.run(serving, &shutdown).await;
        tracing::info!(
            ok = served.is_ok(),
            "grpc server stopped; flushing kafka producer"
        );
        drain(&backends, &shutdown, &background, services, tasks).await?;
        if let Some(e) = ended {
            return Err(e.into());
        }
        served?;
        Ok(())
    }
}

/// The tasks that run beside the gRPC server until the drain ends: the
/// finalizer (unless --no-consumer), the sweeper and the gauges.
fn start_background(
    tasks: &mut Supervisor,
    backends: &Backends,
    settings: &Settings,
    serve: &ServeSettings,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if !serve.no_consumer {
        tasks.spawn("finalizer", backends.finalizer(settings)?.run(stop.clone()));
    }
    let sweeper = Sweeper::new(
        backends.pg.clone(),
        backends.redis.clone(),
        backends.publisher.clone(),
        settings.kafka.clone(),
        settings.sweep.clone(),
    );
    tasks.spawn("sweeper", sweeper.run(stop.clone()));
    tasks.spawn("gauges", backends.gauges(settings).run(stop.clone()));
    Ok(())
}

/// The services behind the gRPC edge.
struct Services {
    issuer: Arc<IssuerService>,
    admin: Arc<AdminService>,
}

impl Services {
    fn build(
        backends: &Backends,
        settings: &Settings,
        shutdown: &CancellationToken,
        tasks: &mut Supervisor,
    ) -> Self {
        let batcher = Batcher::start(
            backends.redis.clone(),
            backends.pg.clone(),
            settings.issue.batch_size,
            settings.issue.workers,
            settings.issue.retry,
            tasks,
        );
        let issuer = Arc::new(IssuerService::new(
            batcher,
            backends.redis.clone(),
            backends.pg.clone(),
            backends.publisher.clone(),
            settings.issue.durability,
            tasks.spawner(),
        ));
        let jobs = PreloadJobs::new(
            backends.pg.clone(),
            backends.redis.clone(),
            settings.database.url.clone(),
            settings.preload.clone(),
            shutdown.child_token(),
            tasks.spawner(),
        );
        let (resumer, token) = (jobs.clone(), shutdown.child_token());
        tasks.spawn("preload resumer", async move {
            resumer.run_resumer(token).await
        });
        let admin = Arc::new(AdminService::new(
            backends.pg.clone(),
            backends.redis.clone(),
            jobs.clone(),
        ));
        Self { issuer, admin }
    }
}

/// The gRPC server: health, reflection, and both APIs behind their access
/// rules, with the configured limits and TLS.
fn grpc_server(
    serve: &ServeSettings,
    settings: &Settings,
    services: &Services,
    health: HealthServer<impl Health>,
    spawner: Spawner,
) -> anyhow::Result<Router<Layers>> {
    let limits = &serve.limits;
    let request_cap = limits.request_timeout;
    let admin_svc = CouponAdminServer::new(AdminApi::new(services.admin.clone(), request_cap))
        .max_decoding_message_size(limits.max_message_bytes);
    let issuer_svc = CouponIssuerServer::new(IssuerApi::new(
        services.issuer.clone(),
        settings.issue.stream_in_flight,
        spawner,
    ))
    .max_decoding_message_size(limits.max_message_bytes);
    let (admin_access, issuer_access) = access(serve)?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = serve.tls.server_config()? {
        tracing::info!(mtls = serve.tls.client_ca.is_some(), "TLS on");
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        // gRPC-Web (browsers) comes over HTTP/1.1 too; the layer turns it
        // into gRPC before anything else sees it, and CORS answers a
        // browser's preflight before that.
        .accept_http1(true)
        .layer(tower::util::option_layer(cors(&serve.cors)))
        .layer(ReadWholeLayer {
            max_message: limits.max_message_bytes,
        })
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(ObserveLayer)
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        // Client deadlines (grpc-timeout) are honoured below this cap.
        .timeout(request_cap)
        .tcp_nodelay(true)
        // h2 buffers a stream's frames the server has not read yet, and
        // counts small DATA frames against a budget of half the connection
        // window: a client streaming tiny Issue messages faster than the
        // stream's 512 in-flight items are answered (ghz does) would
        // exhaust it and get GOAWAY "too_many_data_frames". A wide
        // connection window with modest stream windows keeps what one
        // stream may buffer well inside the budget.
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(InterceptedService::new(
            admin_svc,
            RequireToken::new(admin_access),
        ))
        .add_service(InterceptedService::new(
            issuer_svc,
            RequireToken::new(issuer_access),
        )))
}

/// The server's layers, innermost first (CORS is the outermost).
type Layers = Stack<
    ObserveLayer,
    Stack<
        tonic_web::GrpcWebLayer,
        Stack<ReadWholeLayer, Stack<tower::util::Either<CorsLayer, Identity>, Identity>>,
    >,
>;

/// CORS for gRPC-Web from the configured origins: the headers a gRPC-Web
/// call sends, and the trailers-as-headers its client must read. No origin
/// configured: no layer (every call skips it), no CORS header at all, so
/// browsers refuse cross-origin calls.
fn cors(origins: &CorsOrigins) -> Option<CorsLayer> {
    use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
    let allow = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().filter_map(|o| o.parse().ok())),
    };
    let h = HeaderName::from_static;
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            h("x-grpc-web"),
            h("x-user-agent"),
            h("grpc-timeout"),
        ])
        .expose_headers([
            h("grpc-status"),
            h("grpc-message"),
            h("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 3600));
    Some(layer)
}

/// Who may call CouponAdmin and CouponIssuer.
fn access(serve: &ServeSettings) -> anyhow::Result<(Access, Access)> {
    let admin = match serve.auth.admin_token()? {
        Some(t) => Access::Token(Arc::new(t)),
        None if serve.auth.insecure_dev => {
            tracing::warn!("--insecure-dev: CouponAdmin accepts calls WITHOUT a token; never use this in production");
            Access::Open
        }
        None => Access::Closed(
            "CouponAdmin is disabled: the server has no admin token configured (COUPOND_ADMIN_TOKEN)",
        ),
    };
    let issuer = match serve.auth.issuer_token()? {
        Some(t) => Access::Token(Arc::new(t)),
        None => Access::Open,
    };
    Ok((admin, issuer))
}

/// Server reflection of every coupond proto and health (both protocol
/// versions are served: grpcurl and ghz ask either).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The drain, after the gRPC server stopped accepting and finished the
/// calls in flight. Its phases, in this order, each within its deadline:
/// 1. the streams' responders answer what they read;
/// 2. the background publishes (async durability) hand their messages over;
/// 3. the producer flushes (what the answers promised reaches Kafka);
/// 4. everything else is told to stop, and the preload jobs stop at a
///    chunk's end, letting their leases go;
/// 5. every supervised task ends (the finalizer first records what its
///    partitions hold, then commits).
async fn drain(
    backends: &Backends,
    shutdown: &CancellationToken,
    background: &CancellationToken,
    services: Services,
    tasks: Supervisor,
) -> anyhow::Result<()> {
    let spawner = tasks.spawner();
    for (kind, what) in [
        (Kind::Stream, "stream responders"),
        (
            Kind::Publish,
            "background publishes (the sweeper republishes them)",
        ),
    ] {
        let left = spawner.drain(kind, FLUSH_TIMEOUT).await;
        if left > 0 {
            tracing::error!(left, "{what} unfinished at shutdown");
        }
    }
    let publisher = backends.publisher.clone();
    let flushed = tokio::task::spawn_blocking(move || publisher.flush(FLUSH_TIMEOUT)).await?;
    if let Err(e) = &flushed {
        tracing::error!(error = %e, "producer flush incomplete; pending issuances will be republished");
    }
    shutdown.cancel();
    background.cancel();
    if spawner.drain(Kind::PreloadJob, JOBS_TIMEOUT).await > 0 {
        tracing::error!(
            "preload jobs still running at shutdown; their leases let another server resume them"
        );
    }
    // The batch workers stop once the last handle to them is gone.
    drop(services);
    tasks.wait_all(TASKS_TIMEOUT).await;
    Ok(())
}

/// `coupond consume`: the finalizer, the gauges and (unless `health` is
/// None) a health listener, until `stop` fires.
pub async fn consume(
    settings: &Settings,
    health: Option<SocketAddr>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let backends = Backends::connect(settings).await?;
    let mut tasks = Supervisor::default();
    tasks.spawn("gauges", backends.gauges(settings).run(stop.clone()));
    if let Some(addr) = health {
        health_listener(&mut tasks, &backends, settings, addr, &stop).await?;
    }
    let finalizing = backends.finalizer(settings)?.run(stop.clone());
    let (finalized, ended) = tasks.run(finalizing, &stop).await;
    stop.cancel();
    tasks.wait_all(TASKS_TIMEOUT).await;
    if let Some(e) = ended {
        return Err(e.into());
    }
    finalized
}

/// Serves `grpc.health.v1` alone on `addr`, reporting the finalizer.
async fn health_listener(
    tasks: &mut Supervisor,
    backends: &Backends,
    settings: &Settings,
    addr: SocketAddr,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the health listener {addr}: {e}"))?;
    let reporter = tonic_health::server::HealthReporter::new();
    let svc = DrainingHealth::new(reporter.clone(), stop.clone());
    health::serving_at_start(&reporter, Reports::Finalizer).await;
    let readiness = backends.readiness(settings);
    // Health goes NOT_SERVING at the signal; the listener outlives the
    // finalizer's drain and stops with the process.
    let reporting = health::report(reporter, readiness, Reports::Finalizer, stop.clone());
    tasks.spawn("health reporter", reporting);
    let until = stop.clone();
    tasks.spawn("health listener", async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                until.cancelled().await;
                // Let watchers see NOT_SERVING before the listener goes.
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
            .await
            .map_err(anyhow::Error::from)
    });
    tracing::info!(%addr, "finalizer health on {addr}");
    Ok(())
}
