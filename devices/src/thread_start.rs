//! The hook every thread the devices start runs first, so the VMM can confine it (a seccomp
//! filter per kind of thread) without this crate knowing how. Set once with [`set_hook`]; a
//! process that sets none (the unit tests) runs its threads unconfined.

use std::sync::OnceLock;

/// What a device thread does, for the hook to pick its confinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A virtio-snd stream's period thread; `backend` is [`Backend::name`]
    /// (`alsa`, `wav`, `null`).
    ///
    /// [`Backend::name`]: crate::virtio::snd::backend::Backend::name
    SoundPeriod { backend: &'static str },
    /// The virtio-blk worker (reads, writes and flushes of the disk file).
    BlockWorker,
    /// The virtio-snd jack watcher: re-opens a lost host device (`backend` as above) once a
    /// second to see whether it is back.
    JackWatcher { backend: &'static str },
}

/// Called at the start of each device thread, on that thread, before it does anything else.
pub type ThreadStartHook = fn(ThreadKind);

static HOOK: OnceLock<ThreadStartHook> = OnceLock::new();

/// Sets the hook (the first call wins; later ones are ignored and return false).
pub fn set_hook(hook: ThreadStartHook) -> bool {
    HOOK.set(hook).is_ok()
}

/// Runs the hook for a thread of `kind`: call it first thing in the thread.
pub fn started(kind: ThreadKind) {
    if let Some(hook) = HOOK.get() {
        hook(kind);
    }
}
