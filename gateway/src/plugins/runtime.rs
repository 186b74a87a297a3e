//! The process-wide wasmtime engine, its epoch ticker, and compiled-component caching.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, StoreContextMut, UpdateDeadline};

use super::bindings::Plugin;
use super::host::HostState;

/// How often the epoch advances while some plugin code runs: a call that overruns its
/// deadline is stopped within this (plus scheduling delay) after the deadline.
pub const TICK: Duration = Duration::from_millis(1);
/// Shortest sleep of an idle ticker, whatever the shortest deadline: a call whose deadline is
/// shorter than this can run up to this plus [`TICK`].
pub const MIN_IDLE_SLEEP: Duration = Duration::from_millis(5);
/// Longest sleep of an idle ticker (before any plugin has told it its deadline).
const MAX_IDLE_SLEEP: Duration = Duration::from_secs(1);

/// Engine, linker and compiled components shared by every plugin in the process.
pub struct Runtime {
    /// The engine every plugin store belongs to.
    pub engine: Engine,
    /// Host imports, ready to pre-instantiate components against.
    pub linker: Linker<HostState>,
    compiled: Mutex<HashMap<String, Component>>,
    ticker: Arc<Ticker>,
    ticker_thread: std::thread::Thread,
}

/// The thread that advances the engine's epoch, every [`TICK`] while some plugin code runs.
///
/// Each store checks its own wall-clock deadline when the epoch advances (see
/// [`Runtime::check_deadline`]), so the epoch need not advance at all while no call can be overdue.
/// Idle, the ticker sleeps for the shortest deadline of any plugin loaded: a call that starts
/// just after it looked cannot be overdue before it looks again. Ticking every millisecond, being
/// woken by each call, or polling at a fixed short interval each cost more CPU than the plugin
/// calls themselves at moderate rates (docs/benchmarks.md, "epoch ticker").
struct Ticker {
    /// Plugin calls (and inits) in progress.
    running: AtomicUsize,
    /// How long the ticker sleeps while no call runs, in nanoseconds.
    idle_sleep: AtomicU64,
}

impl Ticker {
    fn run(&self, engine: &Engine) {
        loop {
            if self.running.load(Ordering::Acquire) == 0 {
                std::thread::park_timeout(Duration::from_nanos(
                    self.idle_sleep.load(Ordering::Relaxed),
                ));
                continue;
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    }
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

/// Refuses bytes that are not WebAssembly at all, or a core module where a component is
/// needed, in one line: the parser's own message for these dumps the header byte by byte.
fn check_header(bytes: &[u8]) -> Result<(), CompileError> {
    const MAGIC: &[u8] = b"\0asm";
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if !bytes.starts_with(MAGIC) {
        return Err(CompileError::Invalid(format!(
            "not a WebAssembly file (it starts with bytes {}, not 00 61 73 6d)",
            head.join(" ")
        )));
    }
    // Version and layer: 01 00 00 00 is a core module, 0d 00 01 00 a component.
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(CompileError::Invalid(
            "a core WebAssembly module, not a component: link it as a component \
             (wasm32-unknown-unknown with wasm-component-ld, or wasm-tools component new)"
                .into(),
        ));
    }
    Ok(())
}

/// An engine error on one line, for logs, replies and `--check`.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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
            idle_sleep: AtomicU64::new(MAX_IDLE_SLEEP.as_nanos() as u64),
        });
        let (epoch, state) = (engine.clone(), ticker.clone());
        let ticker_thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || state.run(&epoch))
            .map_err(|e| CompileError::Engine(e.to_string()))?
            .thread()
            .clone();
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            ticker,
            ticker_thread,
        })
    }

    /// Tells the ticker that calls may now have deadlines as short as `timeout`, so that it
    /// looks for running calls at least that often while idle (never less than
    /// [`MIN_IDLE_SLEEP`]). The shortest deadline ever announced stays in force.
    pub fn announce_deadline(&self, timeout: Duration) {
        let nanos = timeout.clamp(MIN_IDLE_SLEEP, MAX_IDLE_SLEEP).as_nanos() as u64;
        if self.ticker.idle_sleep.fetch_min(nanos, Ordering::Relaxed) > nanos {
            // It may be in a longer sleep taken before this deadline existed.
            self.ticker_thread.unpark();
        }
    }

    /// Keeps the epoch ticking until the guard is dropped; hold it around every call into
    /// plugin code, on a store armed with [`Runtime::arm`] whose plugin's timeout was
    /// announced ([`Runtime::announce_deadline`]).
    pub fn ticking(&self) -> Ticking<'_> {
        self.ticker.running.fetch_add(1, Ordering::AcqRel);
        Ticking(&self.ticker)
    }

    /// Gives the store's next call until `deadline` (wall clock): the store checks it each
    /// time the epoch advances ([`Runtime::check_deadline`], installed on every store).
    pub fn arm(store: &mut Store<HostState>, deadline: Instant) {
        store.data_mut().deadline = deadline;
        store.set_epoch_deadline(1);
    }

    /// The store's epoch-deadline callback: each time the epoch advances during a call, stop
    /// it if its wall-clock deadline has passed, or else wait for the next tick.
    pub fn check_deadline(
        store: StoreContextMut<'_, HostState>,
    ) -> wasmtime::Result<UpdateDeadline> {
        Ok(if Instant::now() >= store.data().deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(1)
        })
    }

    /// Compiles `bytes` (hash `hash`), reusing an earlier compilation from memory or from
    /// `cache_dir` when there is one.
    pub fn compile(
        &self,
        bytes: &[u8],
        hash: &str,
        cache_dir: Option<&Path>,
    ) -> Result<Component, CompileError> {
        let cached = cache_dir.map(|dir| dir.join(format!("{hash}.cwasm")));
        if let Some(c) = self.compiled.lock().expect("cache lock").get(hash).cloned() {
            // Compiled earlier in this process, perhaps for another cache directory.
            if let Some(path) = cached.as_deref().filter(|p| !p.exists()) {
                store_cached(&c, path);
            }
            return Ok(c);
        }
        let component = match cached.as_deref().and_then(|p| self.load_cached(p)) {
            Some(c) => c,
            None => {
                check_header(bytes)?;
                let c = Component::new(&self.engine, bytes)
                    .map_err(|e| CompileError::Invalid(one_line(&format!("{e:#}"))))?;
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
            // Write then rename, so a concurrent reader never sees half a file; a name of its
            // own per write, as two loads in one process may compile the same version at once.
            static WRITES: AtomicU64 = AtomicU64::new(0);
            let n = WRITES.fetch_add(1, Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write compiled-plugin cache entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_sleep(runtime: &Runtime) -> Duration {
        Duration::from_nanos(runtime.ticker.idle_sleep.load(Ordering::Relaxed))
    }

    /// The idle ticker must look at least as often as the shortest deadline of any plugin
    /// loaded, or a call of that plugin could overrun by up to the longer sleep.
    #[test]
    fn the_idle_ticker_sleeps_for_the_shortest_deadline_announced() {
        let runtime = Runtime::new().expect("runtime");
        assert_eq!(idle_sleep(&runtime), MAX_IDLE_SLEEP);
        runtime.announce_deadline(Duration::from_millis(200));
        assert_eq!(idle_sleep(&runtime), Duration::from_millis(200));
        runtime.announce_deadline(Duration::from_millis(20));
        runtime.announce_deadline(Duration::from_millis(500));
        assert_eq!(idle_sleep(&runtime), Duration::from_millis(20));
        runtime.announce_deadline(Duration::from_millis(1));
        assert_eq!(idle_sleep(&runtime), MIN_IDLE_SLEEP);
    }
}
