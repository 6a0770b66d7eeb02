use anyhow::Context;
use clap::{Parser, Subcommand};
use portico::app::{self, demo};
use portico::config::{Severity, Source};
use portico::explain::{self, Probe};
use portico::{compile, telemetry};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portico: a declarative API gateway driven by one gateway.yaml.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The config: a file, or a directory of a base file and team files.
        #[arg(short, long, env = "PORTICO_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running Portico (graceful binary upgrade).
        #[arg(long)]
        upgrade: bool,
        /// Do not watch the config for changes; reload only on SIGHUP.
        #[arg(long)]
        no_watch: bool,
    },
    /// Check a config file: every problem with file:line:col; exit 1 when it is refused.
    Check {
        /// The config (also `-c`/`PORTICO_CONFIG`, like `run` and `route`).
        file: Option<PathBuf>,
        /// The config: a file, or a directory of a base file and team files.
        #[arg(short, long, env = "PORTICO_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
        /// Treat warnings (shadowed routes, unused upstreams) as errors.
        #[arg(long)]
        deny_warnings: bool,
        /// `text` (stderr, for people), `json` or `sarif` (stdout, for CI annotations).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// What changing OLD to NEW will do: entities added, removed or changed (field by
    /// field), and recorded requests that would be handled differently. Exit 0 when nothing
    /// changes, 1 when behaviour changes, 2 on error.
    Diff {
        /// The running config (or, alone with --requests, the config to check the log's
        /// requests against: a migration's proof).
        old: PathBuf,
        /// The config about to replace OLD.
        new: Option<PathBuf>,
        /// A JSON access log (Portico's stdout) whose requests are replayed through both.
        #[arg(long)]
        requests: Option<PathBuf>,
        /// `text` (for people) or `json`.
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
    },
    /// Explain which route a request takes, or test a table of expected matches.
    Route {
        /// The config: a file, or a directory of a base file and team files.
        #[arg(short, long, env = "PORTICO_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
        /// A YAML list of cases: {request: "GET /path", headers: {...}, route: NAME | status: 404, upstream_path: ...}
        #[arg(long, conflicts_with_all = ["method", "path"])]
        test: Option<PathBuf>,
        /// With --test: also write the results as JUnit XML to this file (for CI).
        #[arg(long, requires = "test")]
        junit: Option<PathBuf>,
        /// The request's method (`GET`).
        method: Option<String>,
        /// The request's path, with its query if any (`/users/7?tab=orders`).
        path: Option<String>,
        /// A request header, `Name: value` (repeatable); `-H 'Host: api.example.com'` sets the host.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Run the gateway on a config together with sample services on its loopback targets.
    Demo {
        /// The config: a file, or a directory of a base file and team files.
        #[arg(short, long, env = "PORTICO_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Exit 0 when the running gateway answers `/health` on its admin listener, else 1 (a
    /// container HEALTHCHECK without curl). The address is `--admin`, else the one `run`
    /// wrote to $PORTICO_ADMIN_FILE (default: portico-admin in the temporary directory),
    /// else `listen.admin` of `-c FILE` when given.
    Health {
        /// The admin listener to ask (IP:PORT).
        #[arg(long, env = "PORTICO_ADMIN")]
        admin: Option<std::net::SocketAddr>,
        /// Read `listen.admin` from this config instead (as `run` started it).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the OpenAPI 3.1 document of the API a config exposes (also admin /openapi.json).
    Openapi {
        /// The config: a file, or a directory of a base file and team files.
        #[arg(short, long, env = "PORTICO_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Print the JSON Schema of gateway.yaml (committed as schemas/gateway.schema.json).
    Schema {
        /// The schema of a team file of a config directory instead
        /// (schemas/team.schema.json).
        #[arg(long)]
        team_file: bool,
    },
    /// Print the version.
    Version,
    /// Print a page of the book's reference as Markdown, generated from the code (committed
    /// under docs/book/src/reference/).
    Reference {
        /// `config`: every key of gateway.yaml from the JSON Schema; `cli`: every command and
        /// flag; `metrics`: every metric; `errors`: every error code.
        #[arg(value_enum, default_value_t = ReferencePage::Config)]
        page: ReferencePage,
    },
    /// API keys for `type: api_key` policies.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Translate another controller's objects into a config directory (a base
    /// gateway.yaml and one file per namespace) and REPORT.md: what was not translated
    /// and why. Raw nginx snippets are listed, never executed.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Print the SHA-256 a keys file stores (`key_sha256`) of the key read from stdin (a
    /// trailing newline is not part of the key). The key itself is never stored.
    Hash,
    /// Make a new random key (32 bytes, base64url) and print it with its SHA-256.
    New,
}

/// What every import reads and writes.
#[derive(clap::Args)]
struct ImportArgs {
    /// The YAML files to read.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The directory to write (made if missing; existing files of the same names are
    /// replaced).
    #[arg(long, default_value = "portico-import")]
    out: PathBuf,
    /// The cluster's DNS domain: Services become SERVICE.NAMESPACE.svc.DOMAIN:PORT.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

#[derive(Subcommand)]
enum ImportFrom {
    /// `networking.k8s.io/v1` Ingress objects with ingress-nginx annotations (multi-document
    /// YAML, or a `kubectl get ingress -A -o yaml` list).
    Ingress {
        #[command(flatten)]
        args: ImportArgs,
        /// A named Service port's number: [NAMESPACE/]SERVICE:PORT_NAME=NUMBER (repeat it).
        #[arg(long)]
        port_map: Vec<String>,
        /// The Ingress class to import (`spec.ingressClassName`); others are left out.
        #[arg(long, default_value = "nginx")]
        ingress_class: String,
    },
    /// Gateway API objects: `Gateway`s and the `HTTPRoute`s and `GRPCRoute`s attached to
    /// them.
    GatewayApi {
        #[command(flatten)]
        args: ImportArgs,
    },
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    telemetry::init(log_format(&command));
    match dispatch(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `PORTICO_LOG_FORMAT`, else the served config's `server.log_format`.
fn log_format(command: &Command) -> telemetry::LogFormat {
    telemetry::LogFormat::from_env()
        .or_else(|| match command {
            Command::Run { config, .. } | Command::Demo { config } => {
                portico::config::peek_log_format(config)
            }
            _ => None,
        })
        .unwrap_or_default()
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            upgrade,
            no_watch,
        } => {
            app::run(app::RunOptions {
                config: &config,
                upgrade,
                watch: !no_watch,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            file,
            config,
            deny_warnings,
            format,
        } => Ok(check(
            file.as_deref().unwrap_or(&config),
            deny_warnings,
            format,
        )),
        Command::Route {
            config,
            test,
            junit,
            method,
            path,
            headers,
        } => match test {
            Some(cases) => route_test(&config, &cases, junit.as_deref()),
            None => route(&config, method, path, &headers),
        },
        Command::Diff {
            old,
            new,
            requests,
            format,
        } => Ok(match new {
            Some(new) => diff(&old, &new, requests.as_deref(), format),
            None => against_log(&old, requests.as_deref(), format),
        }),
        Command::Demo { config } => demo(&config),
        Command::Health { admin, config } => health(admin, config.as_deref()),
        Command::Openapi { config } => {
            let snapshot = compile::load(&config)?;
            println!("{:#}", portico::openapi::of(&snapshot));
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { team_file } => {
            print!("{}", portico::config::json_schema(team_file));
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { from } => import(from),
        Command::Keys { action } => keys(action),
        Command::Reference { page } => reference(page),
        Command::Version => {
            println!("portico {}", portico::VERSION);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReferencePage {
    Config,
    Cli,
    Metrics,
    Errors,
}

/// `portico reference PAGE`: exit 1, naming them, when something has no description.
fn reference(page: ReferencePage) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    use portico::reference;
    let generated = match page {
        ReferencePage::Config => {
            let schema: serde_json::Value =
                serde_json::from_str(&portico::config::json_schema(false))?;
            let intro = "Every key of `gateway.yaml`, generated by `portico reference config` from the JSON Schema the config model derives (`schemas/gateway.schema.json`): a test fails when this page is stale or a key has no description. `NAME` stands for a name you choose; `[]` for each item of a list; `(type: X)` marks the keys of one kind of a policy.";
            Ok(reference::markdown("Config reference", intro, &schema))
        }
        ReferencePage::Cli => reference::cli(&Cli::command()),
        ReferencePage::Metrics => reference::metrics(&telemetry::Metrics::new().catalog),
        ReferencePage::Errors => Ok(reference::errors()),
    };
    match generated {
        Ok(page) => {
            print!("{page}");
            Ok(ExitCode::SUCCESS)
        }
        Err(missing) => {
            eprintln!("error: no description: {}", missing.join(", "));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `portico keys hash|new`.
fn keys(action: KeysAction) -> anyhow::Result<ExitCode> {
    use portico::policy::auth::api_key::key_digest_hex;
    match action {
        KeysAction::Hash => {
            let mut key = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut key)?;
            anyhow::ensure!(
                !key.trim_end_matches(['\r', '\n']).is_empty(),
                "no key on stdin: `printf %s KEY | portico keys hash`"
            );
            println!("{}", key_digest_hex(&key));
        }
        KeysAction::New => {
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
            let key =
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
            println!("key:        {key}\nkey_sha256: {}", key_digest_hex(&key));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
    Sarif,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DiffFormat {
    Text,
    Json,
}

/// `portico diff`: exit 0 unchanged, 1 changed, 2 when a config or the log cannot be read.
fn diff(old: &Path, new: &Path, requests: Option<&Path>, format: DiffFormat) -> ExitCode {
    let error = ExitCode::from(2);
    let (a, b) = match (compile::load(old), compile::load(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for (file, e) in [(old, a.err()), (new, b.err())] {
                if let Some(e) = e {
                    eprintln!("{e}\n{}: refused", file.display());
                }
            }
            return error;
        }
    };
    let log = match requests.map(std::fs::read_to_string).transpose() {
        Ok(log) => log,
        Err(e) => {
            eprintln!("cannot read the access log: {e}");
            return error;
        }
    };
    let report = portico::diff::diff(&a, &b, log.as_deref());
    match format {
        DiffFormat::Json => println!("{:#}", serde_json::to_value(&report).unwrap_or_default()),
        DiffFormat::Text => print!("{}", portico::diff::text(&report, log.is_some())),
    }
    if report.changes_behaviour() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `portico diff CONFIG --requests LOG`: the log's requests that CONFIG would send
/// elsewhere. Exit 0 when none, 1 when some, 2 on error.
fn against_log(config: &Path, requests: Option<&Path>, format: DiffFormat) -> ExitCode {
    let error = ExitCode::from(2);
    let Some(requests) = requests else {
        eprintln!("give two configs (OLD NEW), or one with --requests LOG");
        return error;
    };
    let snapshot = match compile::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}\n{}: refused", config.display());
            return error;
        }
    };
    let log = match std::fs::read_to_string(requests) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("cannot read the access log: {e}");
            return error;
        }
    };
    let report = portico::diff::against_log(&snapshot, &log);
    if report.replayed == 0 {
        eprintln!("no request of the log could be read: Portico's JSON access log, ingress-nginx's default format and nginx's combined are");
        return error;
    }
    match format {
        DiffFormat::Json => println!("{:#}", serde_json::to_value(&report).unwrap_or_default()),
        DiffFormat::Text => print!("{}", portico::diff::text(&report, true)),
    }
    if report.changes_behaviour() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check(file: &Path, deny_warnings: bool, format: Format) -> ExitCode {
    let result = compile::load(file);
    if format != Format::Text {
        let (ok, diags) = match &result {
            Ok(snap) => (!deny_warnings || snap.warnings.is_empty(), &snap.warnings),
            Err(e) => (false, &e.0),
        };
        let report = match format {
            Format::Sarif => portico::diag::report::sarif(diags),
            _ => portico::diag::report::json(file, ok, diags),
        };
        println!("{report:#}");
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match result {
        Ok(snap) => {
            for w in &snap.warnings {
                eprintln!("{w}");
            }
            let routes = snap.routes.len();
            let failed = deny_warnings && !snap.warnings.is_empty();
            let verdict = if failed {
                "refused (warnings denied)"
            } else {
                "OK"
            };
            println!(
                "{}: {verdict}: {routes} routes, {} upstreams, {} warnings",
                file.display(),
                snap.upstreams.len(),
                snap.warnings.len()
            );
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            let errors = e.0.iter().filter(|d| d.severity == Severity::Error).count();
            eprintln!("{e}");
            let noun = if errors == 1 { "error" } else { "errors" };
            eprintln!("{}: refused: {errors} {noun}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// The admin listener `portico health` asks: the flag, the config given, or the address
/// the running process wrote.
fn admin_to_ask(
    admin: Option<std::net::SocketAddr>,
    config: Option<&Path>,
) -> anyhow::Result<std::net::SocketAddr> {
    if let Some(admin) = admin {
        return Ok(admin);
    }
    let text = match config {
        // Only the base file: a team file's mistake must not fail a healthy gateway's check.
        Some(config) => portico::config::files::base_raw(config)?
            .raw
            .listen
            .admin
            .clone(),
        None => {
            let file = app::admin_file();
            std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "no running gateway wrote its admin address to {}: pass --admin IP:PORT",
                    file.display()
                )
            })?
        }
    };
    // The file holds the address, then the pid of the process that wrote it.
    let text = text.split_whitespace().next().unwrap_or_default();
    text.parse()
        .with_context(|| format!("admin address `{text}`"))
}

/// Asks the running gateway's admin listener for `/health`.
fn health(admin: Option<std::net::SocketAddr>, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    let admin = admin_to_ask(admin, config)?;
    // A wildcard listen address is reached on loopback.
    let target = match admin.ip() {
        ip if ip.is_unspecified() => std::net::SocketAddr::new([127, 0, 0, 1].into(), admin.port()),
        _ => admin,
    };
    let timeout = std::time::Duration::from_secs(3);
    let mut conn = std::net::TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connecting to the admin listener {target}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: portico\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let healthy = answer.starts_with(b"HTTP/1.1 200");
    println!(
        "{target}: {}",
        if healthy { "healthy" } else { "unhealthy" }
    );
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `route --test`: a table of expected matches; exit 1 on any mismatch.
fn route_test(config: &Path, cases: &Path, junit: Option<&Path>) -> anyhow::Result<ExitCode> {
    let snap = compile::compile(&Source::load(config)?)?;
    let text =
        std::fs::read_to_string(cases).with_context(|| format!("reading {}", cases.display()))?;
    let outcomes = explain::run_cases(&snap, &text).map_err(anyhow::Error::msg)?;
    if let Some(file) = junit {
        std::fs::write(file, explain::junit(&outcomes))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let (report, ok) = explain::report(&outcomes);
    print!("{report}");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn route(
    config: &Path,
    method: Option<String>,
    path: Option<String>,
    headers: &[String],
) -> anyhow::Result<ExitCode> {
    let src = Source::load(config)?;
    let snap = compile::compile(&src)?;
    let (Some(method), Some(path)) = (method, path) else {
        anyhow::bail!(
            "give METHOD and PATH (e.g. `portico route GET /users/1`), or --test cases.yaml"
        );
    };
    let probe = Probe::parse(&method, &path, headers).map_err(anyhow::Error::msg)?;
    print!("{}", explain::explain(&snap, &probe));
    Ok(ExitCode::SUCCESS)
}

fn demo(config: &Path) -> anyhow::Result<ExitCode> {
    let opts = app::RunOptions {
        config,
        upgrade: false,
        watch: true,
    };
    let mut built = app::build(&opts)?;
    let snapshot = built.holder.load();
    for started in demo::add_sample_services(&mut built.server, &snapshot) {
        tracing::info!("demo: sample service {started}");
    }
    demo::announce_when_ready(&mut built.server, &snapshot);
    app::serve(built);
    Ok(ExitCode::SUCCESS)
}

/// `portico import`: writes the translation and REPORT.md, prints the report; exit 0 when
/// something was translated, 2 when nothing could be read.
fn import(from: ImportFrom) -> anyhow::Result<ExitCode> {
    let (args, port_map, ingress_class) = match from {
        ImportFrom::Ingress {
            args,
            port_map,
            ingress_class,
        } => (args, port_map, Some(ingress_class)),
        ImportFrom::GatewayApi { args } => (args, Vec::new(), None),
    };
    let ImportArgs {
        files,
        out,
        cluster_domain,
    } = args;
    let gateway_api = ingress_class.is_none();
    let mut opts = portico::import::Options {
        cluster_domain,
        ingress_class: ingress_class.unwrap_or_default(),
        ..Default::default()
    };
    for entry in &port_map {
        if let Err(e) = opts.add_port_map(entry) {
            eprintln!("--port-map {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let objects = match portico::import::read_objects(&files) {
        Ok(objects) => objects,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let output = match gateway_api {
        true => portico::import::gateway_api::translate(&objects, &opts),
        false => portico::import::ingress::translate(&objects, &opts),
    };
    let written = output
        .write(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    // What `check` says of the result, in the report: routes one file shadows in another
    // (files are tried by name) are the ones to review first.
    let checked = match compile::load(&out) {
        Ok(snapshot) => snapshot.warnings,
        Err(e) => e.0,
    };
    let mut report = output.report();
    if !checked.is_empty() {
        report.push_str(&format!("\n## portico check ({})\n\n", checked.len()));
        for d in &checked {
            report.push_str(&format!("- {}\n", d.one_line()));
        }
        std::fs::write(out.join("REPORT.md"), &report).with_context(|| "writing REPORT.md")?;
    }
    print!("{report}");
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    eprintln!(
        "wrote {}; next: `portico check {}`",
        out.join("REPORT.md").display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
