//! `switchyard plugin ...`: the plugin author's toolkit. Scaffolds a plugin in Rust, JavaScript
//! or Python, builds it into a component and runs its native tests with that language's own
//! tools (cargo, the JS SDK's build, the Python SDK's build), and pushes a component to a
//! running gateway's admin API (a hot swap). Separate from the server: nothing here runs in a
//! node.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `plugin-sdk` (cargo).
    Rust,
    /// JavaScript, with `plugin-sdk/js` (componentize-js).
    Js,
    /// Python, with `plugin-sdk/python` (componentize-py).
    Python,
}

/// `switchyard plugin <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PluginCommand {
    /// Scaffold a plugin (source, a test, the build set-up) that upper-cases `text`.
    New {
        /// Plugin name: 1 to 64 ASCII letters, digits, `-` and `_`.
        name: String,
        /// Language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Directory to create (default: plugins/<name>, plugins/js/<name> or
        /// plugins/python/<name> in the repository).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin directory into a component (default: target/plugins/<name>.wasm).
    Build {
        /// The plugin's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Where to write the component.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Run a plugin's native tests (no wasm).
    Test {
        /// The plugin's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Upload a component to a running gateway: every node serves it (hot swap), or, with
    /// `--shadow` or `--canary`/`--tenants`, runs it beside the live version.
    Push {
        /// Plugin name (as bound in the gateway's configuration).
        name: String,
        /// The component file.
        file: PathBuf,
        /// The gateway to talk to.
        #[command(flatten)]
        gateway: Gateway,
        /// Run it as a shadow of PERCENT of calls (default 100): decisions compared, not used.
        #[arg(long, value_name = "PERCENT", num_args = 0..=1, default_missing_value = "100", conflicts_with = "canary")]
        shadow: Option<String>,
        /// Serve PERCENT of users with it (`10` or `10%`).
        #[arg(long, value_name = "PERCENT")]
        canary: Option<String>,
        /// Serve these tenants with it (comma-separated): a canary.
        #[arg(long, value_name = "A,B", conflicts_with = "shadow")]
        tenants: Option<String>,
        /// What a canary's share is decided by: `user` or `channel`.
        #[arg(long, value_name = "BY")]
        by: Option<String>,
        /// Promote the canary to everyone after SECONDS without a guard breach.
        #[arg(long, value_name = "SECONDS")]
        promote_after: Option<u64>,
        /// Further plan settings (`window_ms=10000`, `max_error_rate=0.02`, ...; README).
        #[arg(long = "plan", value_name = "KEY=VALUE")]
        plan: Vec<String>,
    },
    /// Make a plugin's shadow or canary the live version for everyone.
    Promote {
        /// Plugin name.
        name: String,
        /// The gateway to talk to.
        #[command(flatten)]
        gateway: Gateway,
    },
    /// Drop a plugin's shadow or canary: the live version serves everyone.
    Abort {
        /// Plugin name.
        name: String,
        /// The gateway to talk to.
        #[command(flatten)]
        gateway: Gateway,
    },
}

/// Which gateway the admin commands talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct Gateway {
    /// The gateway's base URL (its `admin.listen`, or `server.listen`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    admin: String,
    /// The admin token (`admin.token`).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

/// Why a toolkit command failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolkitError {
    /// Bad arguments or a directory the command cannot use.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A tool the command runs failed or is missing.
    #[error("{0}")]
    Tool(String),
    /// The gateway refused the push or could not be reached.
    #[error("push: {0}")]
    Push(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ToolkitError + '_ {
    move |source| ToolkitError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs `command`; what it prints goes to the terminal.
pub fn run(command: PluginCommand) -> Result<(), ToolkitError> {
    match command {
        PluginCommand::New { name, lang, dir } => scaffold(&name, lang, dir),
        PluginCommand::Build { path, out } => build(&path, out),
        PluginCommand::Test { path } => test(&path),
        PluginCommand::Push {
            name,
            file,
            gateway,
            shadow,
            canary,
            tenants,
            by,
            promote_after,
            plan,
        } => {
            let mut query = Vec::new();
            if let Some(percent) = shadow {
                query.push(("stage".to_owned(), "shadow".to_owned()));
                query.push(("percent".to_owned(), percent_of(&percent)?));
            } else if canary.is_some() || tenants.is_some() {
                query.push(("stage".to_owned(), "canary".to_owned()));
                if let Some(percent) = canary {
                    query.push(("percent".to_owned(), percent_of(&percent)?));
                }
                if let Some(tenants) = tenants {
                    query.push(("tenants".to_owned(), tenants));
                }
            } else if by.is_some() || promote_after.is_some() || !plan.is_empty() {
                return Err(ToolkitError::Usage(
                    "--by, --promote-after and --plan go with --shadow, --canary or --tenants"
                        .into(),
                ));
            }
            if let Some(by) = by {
                query.push(("by".to_owned(), by));
            }
            if let Some(secs) = promote_after {
                query.push(("promote_after_ms".to_owned(), (secs * 1000).to_string()));
            }
            for kv in plan {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(ToolkitError::Usage(format!(
                        "--plan {kv}: expected KEY=VALUE"
                    )));
                };
                query.push((k.to_owned(), v.to_owned()));
            }
            push(&name, &file, &gateway, &query)
        }
        PluginCommand::Promote { name, gateway } => {
            admin_call(&gateway, "POST", &format!("{name}/rollout/promote"))
        }
        PluginCommand::Abort { name, gateway } => {
            admin_call(&gateway, "DELETE", &format!("{name}/rollout"))
        }
    }
}

/// The repository root above `start`: where `plugin-sdk/wit/plugin.wit` is.
fn repo_root(start: &Path) -> Result<PathBuf, ToolkitError> {
    let start = std::path::absolute(start).map_err(io(start))?;
    start
        .ancestors()
        .find(|d| d.join("plugin-sdk/wit/plugin.wit").is_file())
        .map(Path::to_owned)
        .ok_or_else(|| {
            ToolkitError::Usage(format!(
                "{} is not inside a Switchyard repository (no plugin-sdk/wit/plugin.wit above it)",
                start.display()
            ))
        })
}

const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs");
const JS_PACKAGE: &str = include_str!("../templates/js/package.json");
const JS_INDEX: &str = include_str!("../templates/js/index.js");
const JS_TEST: &str = include_str!("../templates/js/test.mjs");
const PY_PLUGIN: &str = include_str!("../templates/python/plugin.py");
const PY_TEST: &str = include_str!("../templates/python/test_plugin.py");

/// The Python module name of plugin `name`.
fn module_of(name: &str) -> String {
    name.replace('-', "_")
}

fn scaffold(name: &str, lang: Lang, dir: Option<PathBuf>) -> Result<(), ToolkitError> {
    crate::config::check_plugin_name(name).map_err(ToolkitError::Usage)?;
    let root = repo_root(dir.as_deref().unwrap_or(Path::new(".")))?;
    let dir = dir.unwrap_or_else(|| match lang {
        Lang::Rust => root.join("plugins").join(name),
        Lang::Js => root.join("plugins/js").join(name),
        Lang::Python => root.join("plugins/python").join(name),
    });
    if dir.exists() {
        return Err(ToolkitError::Usage(format!(
            "{} exists already",
            dir.display()
        )));
    }
    let dir = std::path::absolute(&dir).map_err(io(&dir))?;
    let sdk = relative(&dir, &root.join("plugin-sdk"));
    let module = module_of(name);
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{module}}", &module)
            .replace("{{sdk}}", &sdk)
    };
    let files: Vec<(String, &str)> = match lang {
        Lang::Rust => vec![
            ("Cargo.toml".into(), RUST_CARGO),
            ("src/lib.rs".into(), RUST_LIB),
        ],
        Lang::Js => vec![
            ("package.json".into(), JS_PACKAGE),
            ("index.js".into(), JS_INDEX),
            (format!("test/{name}.test.mjs"), JS_TEST),
            (".gitignore".into(), "node_modules/\n*.wasm\n"),
        ],
        Lang::Python => vec![
            (format!("{module}.py"), PY_PLUGIN),
            (format!("tests/test_{module}.py"), PY_TEST),
        ],
    };
    for (file, template) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a file in the plugin's directory"))
            .map_err(io(&path))?;
        std::fs::write(&path, fill(template)).map_err(io(&path))?;
    }
    if lang == Lang::Rust && !dir.starts_with(root.join("plugins")) {
        eprintln!(
            "note: {} is outside plugins/: add it to the workspace members in Cargo.toml",
            dir.display()
        );
    }
    let shown = dir
        .strip_prefix(&root)
        .unwrap_or(&dir)
        .display()
        .to_string();
    println!("created {shown} ({lang:?}); next:");
    println!("  switchyard plugin test {shown}");
    println!("  switchyard plugin build {shown}        # -> target/plugins/{name}.wasm");
    println!("  bind it: [[plugins.bindings]] pattern = \"...\" plugin = \"{name}\"");
    println!(
        "  switchyard plugin push {name} target/plugins/{name}.wasm --admin http://127.0.0.1:8080"
    );
    Ok(())
}

/// `to` relative to `from` (both absolute), with `/` separators, for a package.json path.
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// A plugin directory: its language, name and the repository it is in.
struct PluginDir {
    dir: PathBuf,
    lang: Lang,
    name: String,
    root: PathBuf,
}

impl PluginDir {
    fn open(path: &Path) -> Result<Self, ToolkitError> {
        let dir = std::path::absolute(path).map_err(io(path))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lang = if dir.join("Cargo.toml").is_file() {
            Lang::Rust
        } else if dir.join("package.json").is_file() {
            Lang::Js
        } else if dir.join(format!("{}.py", module_of(&name))).is_file() {
            Lang::Python
        } else {
            return Err(ToolkitError::Usage(format!(
                "{}: no Cargo.toml, package.json or {}.py: not a plugin directory",
                dir.display(),
                module_of(&name)
            )));
        };
        let root = repo_root(&dir)?;
        Ok(Self {
            dir,
            lang,
            name,
            root,
        })
    }

    /// The Python to build and test with: `SWITCHYARD_PYTHON`, the suite's venv, or python3.
    fn python(&self) -> PathBuf {
        if let Some(p) = std::env::var_os("SWITCHYARD_PYTHON") {
            return p.into();
        }
        let venv = self.root.join("target/venv/bin/python");
        if venv.is_file() {
            venv
        } else {
            "python3".into()
        }
    }

    /// `npm install` once, so the SDK's build and test harness are there.
    fn npm_ready(&self) -> Result<(), ToolkitError> {
        if self.dir.join("node_modules").is_dir() {
            return Ok(());
        }
        let sdk = self.root.join("plugin-sdk/js");
        if !sdk.join("node_modules").is_dir() {
            run_tool(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&sdk),
            )?;
        }
        run_tool(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund"])
                .current_dir(&self.dir),
        )
    }
}

/// Runs a tool to completion, its output on the terminal; a failure names the command.
fn run_tool(command: &mut Command) -> Result<(), ToolkitError> {
    let shown = format!("{command:?}");
    match command.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(ToolkitError::Tool(format!("{shown} failed ({s})"))),
        Err(e) => Err(ToolkitError::Tool(format!("cannot run {shown}: {e}"))),
    }
}

fn build(path: &Path, out: Option<PathBuf>) -> Result<(), ToolkitError> {
    let p = PluginDir::open(path)?;
    let out = match out {
        Some(out) => std::path::absolute(&out).map_err(io(&out))?,
        None => p
            .root
            .join("target/plugins")
            .join(format!("{}.wasm", p.name)),
    };
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let started = std::time::Instant::now();
    match p.lang {
        Lang::Rust => {
            run_tool(
                Command::new("cargo")
                    .args(["build", "--target", "wasm32-unknown-unknown"])
                    .args(["--profile", "plugin", "--manifest-path"])
                    .arg(p.dir.join("Cargo.toml"))
                    .current_dir(&p.root),
            )?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| p.root.join("target"));
            let built = target
                .join("wasm32-unknown-unknown/plugin")
                .join(format!("{}.wasm", p.name.replace('-', "_")));
            std::fs::copy(&built, &out).map_err(io(&built))?;
        }
        Lang::Js => {
            p.npm_ready()?;
            run_tool(
                Command::new("npx")
                    .args([
                        "--no-install",
                        "switchyard-plugin-js",
                        "build",
                        "index.js",
                        "-o",
                    ])
                    .arg(&out)
                    .current_dir(&p.dir),
            )?;
        }
        Lang::Python => {
            run_tool(
                Command::new(p.python())
                    .args(["-m", "switchyard_plugin", "build"])
                    .arg(p.dir.join(format!("{}.py", module_of(&p.name))))
                    .arg("-o")
                    .arg(&out),
            )?;
        }
    }
    let bytes = std::fs::metadata(&out).map_err(io(&out))?.len();
    println!(
        "{}: {:.1} MB in {:.1} s",
        out.display(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn test(path: &Path) -> Result<(), ToolkitError> {
    let p = PluginDir::open(path)?;
    match p.lang {
        Lang::Rust => run_tool(
            Command::new("cargo")
                .arg("test")
                .arg("--manifest-path")
                .arg(p.dir.join("Cargo.toml")),
        ),
        Lang::Js => {
            p.npm_ready()?;
            run_tool(Command::new("npm").arg("test").current_dir(&p.dir))
        }
        Lang::Python => run_tool(
            Command::new(p.python())
                .args(["-m", "pytest", "-q"])
                .arg(&p.dir),
        ),
    }
}

/// `10`, `10%` or `2.5` as a percent for the plan.
fn percent_of(text: &str) -> Result<String, ToolkitError> {
    let number = text.trim().trim_end_matches('%');
    match number.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(number.to_owned()),
        _ => Err(ToolkitError::Usage(format!(
            "{text:?} is not a percent from 0 to 100"
        ))),
    }
}

/// Uploads `file` as plugin `name`: a hot swap, or a trial when `query` holds a plan.
fn push(
    name: &str,
    file: &Path,
    gateway: &Gateway,
    query: &[(String, String)],
) -> Result<(), ToolkitError> {
    crate::config::check_plugin_name(name).map_err(ToolkitError::Usage)?;
    let bytes = std::fs::read(file).map_err(io(file))?;
    let base = format!(
        "{}/admin/plugins/{name}",
        gateway.admin.trim_end_matches('/')
    );
    let url = if query.is_empty() {
        base
    } else {
        format!("{base}/rollout")
    };
    let mut request = ureq::put(&url)
        .header("Authorization", &format!("Bearer {}", gateway.token))
        .header("Content-Type", "application/wasm");
    for (k, v) in query {
        request = request.query(k, v);
    }
    let answer = request
        .config()
        .http_status_as_error(false)
        .build()
        .send(&bytes[..]);
    answered(&url, answer)
}

/// `method` on `/admin/plugins/<path>` without a body (promote, abort).
fn admin_call(gateway: &Gateway, method: &str, path: &str) -> Result<(), ToolkitError> {
    let name = path.split('/').next().unwrap_or_default();
    crate::config::check_plugin_name(name).map_err(ToolkitError::Usage)?;
    let url = format!(
        "{}/admin/plugins/{path}",
        gateway.admin.trim_end_matches('/')
    );
    let auth = format!("Bearer {}", gateway.token);
    let answer = match method {
        "POST" => ureq::post(&url)
            .header("Authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty(),
        _ => ureq::delete(&url)
            .header("Authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
    };
    answered(&url, answer)
}

/// Prints the gateway's answer, or fails with it.
fn answered(
    url: &str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(), ToolkitError> {
    let answer = answer.map_err(|e| ToolkitError::Push(format!("{url}: {e}")))?;
    let status = answer.status();
    let body = answer
        .into_body()
        .read_to_string()
        .map_err(|e| ToolkitError::Push(format!("{url}: reading the answer: {e}")))?;
    if !status.is_success() {
        return Err(ToolkitError::Push(format!("{url}: {status}: {body}")));
    }
    println!("{body}");
    Ok(())
}
