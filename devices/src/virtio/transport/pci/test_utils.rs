//! Fakes of what the VMM provides, for tests of the transport and of devices behind it.

use std::io;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberId, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use super::{lock, IoEventRegistrar};
use crate::virtio::{SharedSubscriber, SubscriberRegistrar};

/// A `SubscriberRegistrar` over a local event manager the test runs by hand.
pub struct LocalRegistrar {
    pub manager: Mutex<EventManager<SharedSubscriber>>,
    /// How many subscribers are registered now.
    pub live: Mutex<Vec<SubscriberId>>,
    /// Make the next `add` fail.
    pub fail_add: Mutex<bool>,
}

impl LocalRegistrar {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            manager: Mutex::new(EventManager::new().unwrap()),
            live: Mutex::new(Vec::new()),
            fail_add: Mutex::new(false),
        })
    }

    /// Runs the event loop once, waiting up to `timeout_ms`; returns the events dispatched.
    pub fn run_once(&self, timeout_ms: i32) -> usize {
        lock(&self.manager).run_with_timeout(timeout_ms).unwrap()
    }

    pub fn live_count(&self) -> usize {
        lock(&self.live).len()
    }
}

impl SubscriberRegistrar for LocalRegistrar {
    fn add(&self, subscriber: SharedSubscriber) -> io::Result<SubscriberId> {
        if std::mem::take(&mut *lock(&self.fail_add)) {
            return Err(io::Error::other("registration refused by the test"));
        }
        let id = lock(&self.manager).add_subscriber(subscriber);
        lock(&self.live).push(id);
        Ok(id)
    }

    fn remove(&self, id: SubscriberId) -> io::Result<()> {
        lock(&self.manager)
            .remove_subscriber(id)
            .map_err(|e| io::Error::other(e.to_string()))?;
        lock(&self.live).retain(|live| *live != id);
        Ok(())
    }
}

/// An `IoEventRegistrar` recording the addresses registered now.
#[derive(Default)]
pub struct FakeIoEvents {
    pub registered: Mutex<Vec<u64>>,
    pub log: Mutex<Vec<(bool, u64)>>,
}

impl FakeIoEvents {
    pub fn registered(&self) -> Vec<u64> {
        let mut addrs = lock(&self.registered).clone();
        addrs.sort_unstable();
        addrs
    }
}

impl IoEventRegistrar for FakeIoEvents {
    fn register(&self, addr: u64, _evt: &EventFd) -> io::Result<()> {
        lock(&self.log).push((true, addr));
        let mut registered = lock(&self.registered);
        if registered.contains(&addr) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        registered.push(addr);
        Ok(())
    }

    fn unregister(&self, addr: u64, _evt: &EventFd) -> io::Result<()> {
        lock(&self.log).push((false, addr));
        let mut registered = lock(&self.registered);
        let before = registered.len();
        registered.retain(|a| *a != addr);
        if registered.len() == before {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(())
    }
}
