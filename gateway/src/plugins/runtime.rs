//! The process-wide wasmtime engine, its epoch ticker, and compiled-component caching.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::bindings::Plugin;
use super::host::HostState;

/// One epoch tick; plugin deadlines are whole ticks.
pub const TICK: Duration = Duration::from_millis(1);
/// How often the ticker looks for a running call while none was running: a call's deadline
/// starts counting at most this late, so a call is stopped within its timeout plus this.
pub const IDLE_POLL: Duration = Duration::from_millis(5);

/// Engine, linker and compiled components shared by every plugin in the process.
pub struct Runtime {
    /// The engine every plugin store belongs to.
    pub engine: Engine,
    /// Host imports, ready to pre-instantiate components against.
    pub linker: Linker<HostState>,
    compiled: Mutex<HashMap<String, Component>>,
    ticker: Arc<Ticker>,
}

/// The thread that advances the engine's epoch, every [`TICK`] while some plugin code runs.
///
/// A ticker that woke every millisecond for the life of the process cost more CPU than the
/// plugin calls themselves at moderate rates (allow-all on every hook: 1.62 vs 1.28 times
/// floor's CPU per delivery at 20k deliveries/s; with a 10 ms tick the two were equal). Woken
/// by each call instead, it cost two context switches per call (~450 a second per node at
/// 20k deliveries/s, +0.37 µs per delivery); so calls do not wake it: it looks every
/// [`IDLE_POLL`] while idle (200 wake-ups a second, only in a process with plugins).
struct Ticker {
    /// Plugin calls (and inits) in progress.
    running: AtomicUsize,
}

/// Keeps the epoch ticking while a plugin call runs; see [`Runtime::ticking`].
pub struct Ticking<'a>(&'a Ticker);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a component could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The engine could not be created.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
}

/// Hex SHA-256 of a plugin's bytes: its version identity.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// The process-wide runtime, created on first use.
    pub fn global() -> Result<Arc<Runtime>, CompileError> {
        static RUNTIME: OnceLock<Result<Arc<Runtime>, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| Runtime::new().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(CompileError::Engine)
    }

    fn new() -> Result<Self, CompileError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Plugins are synchronous; the concurrency machinery only adds cost per call.
            .concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| CompileError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        Plugin::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| CompileError::Engine(e.to_string()))?;
        let ticker = Arc::new(Ticker {
            running: AtomicUsize::new(0),
        });
        let (epoch, state) = (engine.clone(), ticker.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    if state.running.load(Ordering::Acquire) == 0 {
                        std::thread::sleep(IDLE_POLL);
                        continue;
                    }
                    std::thread::sleep(TICK);
                    epoch.increment_epoch();
                }
            })
            .map_err(|e| CompileError::Engine(e.to_string()))?;
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            ticker,
        })
    }

    /// Keeps the epoch ticking (from the ticker's next look at the latest) until the guard is
    /// dropped; hold it around every call into plugin code, whose deadline is counted in ticks.
    pub fn ticking(&self) -> Ticking<'_> {
        self.ticker.running.fetch_add(1, Ordering::AcqRel);
        Ticking(&self.ticker)
    }

    /// Compiles `bytes` (hash `hash`), reusing an earlier compilation from memory or from
    /// `cache_dir` when there is one.
    pub fn compile(
        &self,
        bytes: &[u8],
        hash: &str,
        cache_dir: Option<&Path>,
    ) -> Result<Component, CompileError> {
        if let Some(c) = self.compiled.lock().expect("cache lock").get(hash) {
            return Ok(c.clone());
        }
        let cached = cache_dir.map(|dir| dir.join(format!("{hash}.cwasm")));
        let component = match cached.as_deref().and_then(|p| self.load_cached(p)) {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, bytes)
                    .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
                if let Some(path) = &cached {
                    store_cached(&c, path);
                }
                c
            }
        };
        self.compiled
            .lock()
            .expect("cache lock")
            .insert(hash.to_owned(), component.clone());
        Ok(component)
    }

    #[allow(unsafe_code)]
    fn load_cached(&self, path: &Path) -> Option<Component> {
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store_cached` from `Component::serialize` into the
        // operator's cache directory, named by the source's content hash; wasmtime checks the
        // engine version and configuration in its header and refuses a mismatch, which we
        // treat as a cache miss.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled-plugin cache entry");
                None
            }
        }
    }
}

fn store_cached(component: &Component, path: &Path) {
    let result = component
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let dir = path.parent().expect("cache path has a parent");
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            // Write then rename, so a concurrent reader never sees half a file.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write compiled-plugin cache entry");
    }
}
