//! Hot swap from the filesystem: watches `plugins.dir` (new, replaced in place or by atomic
//! rename, removed) and the config file, debounced, and applies changes through the rollout
//! (`crate::rollout`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

use crate::config::Source;
use crate::plugins::Code;
use crate::plugins::registry::Origin;
use crate::rollout::Rollout;

/// Quiet time after the last event before changes are applied, so a file being written is
/// read once, complete.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts watching `dir` (and `reload`'s config file); the watcher lives until `shutdown`.
/// Returns an error when the directory cannot be watched (the node runs on without hot swap
/// from files).
pub fn spawn(
    rollout: Arc<Rollout>,
    dir: &Path,
    reload: Option<Source>,
    shutdown: CancellationToken,
) -> notify::Result<()> {
    let dir = dir.to_owned();
    let config_file = reload
        .as_ref()
        .and_then(|c| c.file.clone())
        .map(|p| absolute(&p));
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) raise access events: only content and name changes count.
        if let Ok(event) = event
            && matches!(
                event.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            )
            && !matches!(
                event.kind,
                notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
            )
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    if let Some(parent) = config_file.as_ref().and_then(|f| f.parent()) {
        // Editors replace files by rename: watch the directory, not the inode.
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    tracing::info!(dir = %dir.display(), "watching plugins directory");
    tokio::spawn(run(
        rollout,
        shutdown,
        rx,
        watcher,
        absolute(&dir),
        config_file,
        reload,
    ));
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

async fn run(
    rollout: Arc<Rollout>,
    shutdown: CancellationToken,
    mut rx: mpsc::UnboundedReceiver<PathBuf>,
    _watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    config_file: Option<PathBuf>,
    reload: Option<Source>,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let mut changed: HashSet<PathBuf> = HashSet::from([absolute(&first)]);
        // Debounce: keep collecting until the directory has been quiet for a moment.
        while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            changed.insert(absolute(&p));
        }
        let mut reload_config = false;
        for path in changed {
            if config_file.as_ref() == Some(&path) {
                reload_config = true;
            } else if path.parent() == Some(dir.as_path())
                && path.extension().is_some_and(|e| e == "wasm")
            {
                plugin_file_changed(&rollout, &path).await;
            }
        }
        if reload_config && let Some(source) = &reload {
            reload_bindings(&rollout, source).await;
        }
    }
}

async fn plugin_file_changed(rollout: &Rollout, path: &Path) {
    let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
        return;
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => match rollout.deploy(name, Code::new(bytes), Origin::File).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(plugin = name, file = %path.display(), error = %e, "plugin file refused")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(plugin = name, file = %path.display(), "plugin file removed; the loaded version keeps serving (unbind it through the admin API)");
        }
        Err(e) => tracing::warn!(plugin = name, error = %e, "cannot read plugin file"),
    }
}

/// Re-reads the configuration and applies its `[plugins]` section (bindings, limits); other
/// sections need a restart. An invalid file is refused and the old bindings keep serving.
pub async fn reload_bindings(rollout: &Rollout, source: &Source) {
    match crate::config::Config::load(source) {
        Ok(config) => match rollout.reconfigure(config.plugins).await {
            Ok(()) => tracing::info!("configuration reloaded: plugin bindings applied"),
            Err(e) => {
                tracing::warn!(error = %e, "reloaded bindings refused; the previous ones keep serving")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "configuration reload refused; the previous one keeps serving")
        }
    }
}
