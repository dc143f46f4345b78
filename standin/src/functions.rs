//! Functions: their versions and their pool of instances, and the concurrency accounting.
//!
//! An instance runs one event at a time; between events it waits idle in its function's pool
//! and is reused warm. The function's limit counts busy instances across all of its versions,
//! as Lambda's reserved concurrency does. Retired revisions' busy instances finish their event
//! and are then discarded instead of going back to the pool.

use super::config::{FunctionSpec, VersionSpec};
use super::instances::Instance;
use super::names::{LATEST, version_order};
use super::versions::{Config, Version, Versions};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A function: its versions and its pool of instances.
pub(crate) struct Function {
    pub name: String,
    pub concurrency_limit: usize,
    /// The configuration of versions added with [`Function::add_version`].
    pub defaults: Arc<Config>,
    versions: Mutex<Versions>,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Busy slots, counted from the moment an invocation claims one (a cold start included).
    busy: usize,
    /// Instances running an event, by number; the kill hook reaches them here.
    running: HashMap<u64, Arc<Instance>>,
    idle: Vec<Arc<Instance>>,
    /// Shutting down: no new invocations, every instance killed.
    closed: bool,
    /// Deleted through the control plane: busy instances finish, none goes back to idle.
    retired: bool,
    /// Revisions that are no longer invocable (replaced `$LATEST`s, deleted versions).
    dead: HashSet<u64>,
}

impl Pool {
    /// Puts `instance` among the idle ones, ready for the next invocation of its code, unless
    /// the function stopped taking instances, its code was retired or the process is gone: then
    /// it is killed. Says whether it was kept.
    fn park(&mut self, instance: Arc<Instance>) -> bool {
        let keep = !self.closed
            && !self.retired
            && !self.dead.contains(&instance.revision)
            && instance.runtime.ended().is_none();
        if keep {
            instance.touch();
            self.idle.push(instance);
        } else {
            instance.kill();
        }
        keep
    }
}

pub(crate) enum Acquired {
    Warm(Lease),
    /// A slot is held; the caller spawns the instance and [`Lease::attach`]es it.
    Cold(Lease),
    Throttled,
}

impl Function {
    /// A function given at start: its versions share `defaults`, and it has no `$LATEST`.
    pub(crate) fn new(spec: &FunctionSpec, defaults: Config) -> anyhow::Result<Self> {
        let function = Self::empty(&spec.name, spec.concurrency_limit, defaults);
        for version in &spec.versions {
            function.add_version(version.clone())?;
        }
        Ok(function)
    }

    /// A function with no versions at all yet (the control plane adds `$LATEST`).
    pub(crate) fn empty(name: &str, concurrency_limit: usize, defaults: Config) -> Self {
        Self {
            name: name.to_owned(),
            concurrency_limit,
            defaults: Arc::new(defaults),
            versions: Mutex::new(Versions {
                latest: None,
                published: Vec::new(),
                next_number: 1,
            }),
            pool: Mutex::new(Pool::default()),
        }
    }

    /// `None` and `$LATEST` mean `$LATEST` if the function has one, else the highest
    /// published version.
    pub(crate) fn resolve(&self, qualifier: Option<&str>) -> Option<Version> {
        let versions = lock(&self.versions);
        match qualifier {
            None | Some(LATEST) => versions.latest.clone().or_else(|| {
                versions
                    .published
                    .iter()
                    .max_by(|a, b| version_order(&a.version, &b.version))
                    .cloned()
            }),
            Some(q) => versions.published.iter().find(|v| v.version == q).cloned(),
        }
    }

    pub(crate) fn add_version(&self, version: VersionSpec) -> anyhow::Result<()> {
        let mut versions = lock(&self.versions);
        check_version(&self.name, &versions.published, &version)?;
        if let Ok(n) = version.version.parse::<u64>() {
            versions.next_number = versions.next_number.max(n.saturating_add(1));
        }
        let version = Version::new(version.version, version.binary, Arc::clone(&self.defaults));
        versions.published.push(version);
        Ok(())
    }

    /// Runs `edit` on the versions under their lock (keep it short: no I/O). Revisions it
    /// returns are retired: their idle instances are killed and busy ones discarded after.
    pub(crate) fn edit_versions<R>(&self, edit: impl FnOnce(&mut Versions) -> (R, Vec<u64>)) -> R {
        let (result, retired) = edit(&mut lock(&self.versions));
        if !retired.is_empty() {
            let mut pool = lock(&self.pool);
            pool.dead.extend(retired.iter().copied());
            pool.idle.retain(|instance| {
                let keep = !retired.contains(&instance.revision);
                if !keep {
                    instance.kill();
                }
                keep
            });
        }
        result
    }

    /// Deleted through the control plane: idle instances are killed now, busy ones when their
    /// event is done.
    pub(crate) fn retire(&self) {
        let mut pool = lock(&self.pool);
        pool.retired = true;
        for instance in pool.idle.drain(..) {
            instance.kill();
        }
    }

    pub(crate) fn acquire(self: &Arc<Self>, version: &Version) -> Acquired {
        let mut pool = lock(&self.pool);
        if pool.closed || pool.busy >= self.concurrency_limit {
            return Acquired::Throttled;
        }
        pool.busy += 1;
        let mut lease = Lease {
            function: Arc::clone(self),
            instance: None,
            keep_warm: false,
        };
        // Most recently used first: its caches are the warmest, and the others may be reaped.
        while let Some(pos) = pool
            .idle
            .iter()
            .rposition(|i| i.revision == version.revision)
        {
            let instance = pool.idle.remove(pos);
            if instance.runtime.ended().is_none() {
                pool.running.insert(instance.id, Arc::clone(&instance));
                lease.instance = Some(instance);
                return Acquired::Warm(lease);
            }
            instance.kill();
        }
        Acquired::Cold(lease)
    }

    /// SIGKILLs the instances running an event whose path contains `path` (all busy ones when
    /// `None`); the invocations see a crash. Returns how many.
    pub(crate) fn kill_running_where(&self, path: Option<&str>) -> usize {
        let pool = lock(&self.pool);
        let mut killed = 0;
        for instance in pool.running.values() {
            let hit = match path {
                None => true,
                Some(wanted) => lock(&instance.event_path)
                    .as_deref()
                    .is_some_and(|p| p.contains(wanted)),
            };
            if hit {
                instance.kill();
                killed += 1;
            }
        }
        killed
    }

    /// Stops taking invocations and kills every instance, busy or idle. Returns them so the
    /// caller can wait for the processes to be gone.
    pub(crate) fn close(&self) -> Vec<Arc<Instance>> {
        let mut pool = lock(&self.pool);
        pool.closed = true;
        let mut all: Vec<Arc<Instance>> = pool.idle.drain(..).collect();
        all.extend(pool.running.values().cloned());
        for instance in &all {
            instance.kill();
        }
        all
    }

    /// How many instances of `version`'s code wait idle.
    pub(crate) fn idle_of(&self, version: &Version) -> usize {
        lock(&self.pool)
            .idle
            .iter()
            .filter(|instance| instance.revision == version.revision)
            .count()
    }

    /// An instance started ahead of any invocation (see [`crate::StandIn::warm`]) joins the
    /// idle pool; `false`, and it is killed, if the function no longer takes it.
    pub(crate) fn add_idle(&self, instance: Arc<Instance>) -> bool {
        lock(&self.pool).park(instance)
    }

    /// Lambda recycles environments that sat unused; this keeps long local runs from piling
    /// up processes after a burst.
    pub(crate) fn reap_idle(&self, idle_for: Duration) {
        let mut pool = lock(&self.pool);
        pool.idle.retain(|instance| {
            let keep = instance.idle_since().elapsed() < idle_for;
            if !keep {
                instance.kill();
            }
            keep
        });
    }
}

fn check_version(
    function: &str,
    existing: &[Version],
    version: &VersionSpec,
) -> anyhow::Result<()> {
    let v = &version.version;
    anyhow::ensure!(
        !v.is_empty()
            && v != LATEST
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "function {function}: {v:?} is not a valid version"
    );
    anyhow::ensure!(
        !existing.iter().any(|e| &e.version == v),
        "function {function}: version {v} is already published"
    );
    anyhow::ensure!(
        version.binary.is_file(),
        "function {function} version {v}: bootstrap {} is not a file",
        version.binary.display()
    );
    Ok(())
}

/// One busy slot of a function, and the instance in it once there is one. Dropping it frees
/// the slot; the instance goes back to the pool only if [`Lease::keep_warm`] was called,
/// otherwise it is killed, so an invocation that fails or panics can never leak either.
pub(crate) struct Lease {
    function: Arc<Function>,
    instance: Option<Arc<Instance>>,
    keep_warm: bool,
}

impl Lease {
    pub(crate) fn function(&self) -> &Arc<Function> {
        &self.function
    }

    pub(crate) fn instance(&self) -> Option<&Arc<Instance>> {
        self.instance.as_ref()
    }

    pub(crate) fn attach(&mut self, instance: Arc<Instance>) {
        let mut pool = lock(&self.function.pool);
        if pool.closed {
            // Shutdown raced the cold start: the new process must not outlive the stand-in.
            instance.kill();
        }
        pool.running.insert(instance.id, Arc::clone(&instance));
        self.instance = Some(instance);
    }

    pub(crate) fn keep_warm(&mut self) {
        self.keep_warm = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = lock(&self.function.pool);
        pool.busy -= 1;
        let Some(instance) = self.instance.take() else {
            return;
        };
        pool.running.remove(&instance.id);
        if self.keep_warm {
            pool.park(instance);
        } else {
            instance.kill();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
