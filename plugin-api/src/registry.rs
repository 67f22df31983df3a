//! The live instances of a plugin type, shared by every transport's export code.

use crate::{Error, Exported, Manifest, Result, API_VERSION};
use std::sync::Mutex;

enum Slot<T> {
    Free,
    Ready(Box<T>),
    /// Inside a hook call.
    Busy,
    /// Dropped by a panic.
    Lost,
}

/// The live instances of one plugin type, by id.
pub struct Instances<T> {
    slots: Mutex<Vec<Slot<T>>>,
}

impl<T> Instances<T> {
    pub const fn new() -> Instances<T> {
        Instances {
            slots: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot<T>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, t: T) -> u64 {
        let mut slots = self.lock();
        let id = match slots.iter().position(|s| matches!(s, Slot::Free)) {
            Some(i) => i,
            None => {
                slots.push(Slot::Free);
                slots.len() - 1
            }
        };
        slots[id] = Slot::Ready(Box::new(t));
        id as u64
    }

    /// Runs `f` on instance `id`, taken out of the table for the call so a
    /// re-entrant call is an error rather than a deadlock.
    pub(crate) fn with<R>(&self, id: u64, f: impl FnOnce(&mut T) -> Result<R>) -> Result<R> {
        let inst = {
            let mut slots = self.lock();
            let slot = slots.get_mut(id as usize);
            match slot.map(|s| std::mem::replace(s, Slot::Busy)) {
                Some(Slot::Ready(b)) => b,
                Some(other) => {
                    let why = match other {
                        Slot::Busy => "is already inside a hook call (re-entered)",
                        Slot::Lost => "was lost to an earlier panic",
                        _ => "does not exist",
                    };
                    slots[id as usize] = other;
                    return Err(Error::new(format!("plugin instance {id} {why}")));
                }
                None => return Err(Error::new(format!("plugin instance {id} does not exist"))),
            }
        };
        // Put the instance back when `f` returns; if `f` panics, the guard's drop
        // during unwinding marks the slot Lost (the instance may be half-updated).
        struct Restore<'a, T> {
            table: &'a Instances<T>,
            id: usize,
            inst: Option<Box<T>>,
        }
        impl<T> Drop for Restore<'_, T> {
            fn drop(&mut self) {
                let slot = match self.inst.take() {
                    Some(b) if !std::thread::panicking() => Slot::Ready(b),
                    _ => Slot::Lost,
                };
                self.table.lock()[self.id] = slot;
            }
        }
        let mut restore = Restore {
            table: self,
            id: id as usize,
            inst: Some(inst),
        };
        f(restore.inst.as_mut().expect("just set"))
    }

    pub(crate) fn remove(&self, id: u64) {
        if let Some(s) = self.lock().get_mut(id as usize) {
            *s = Slot::Free;
        }
    }
}

impl<T> Default for Instances<T> {
    fn default() -> Self {
        Instances::new()
    }
}

pub fn manifest_of<T: Exported>() -> Manifest {
    Manifest {
        name: T::NAME.to_string(),
        version: T::VERSION.to_string(),
        description: T::DESCRIPTION.to_string(),
        api_version: API_VERSION.major,
        api_minor: API_VERSION.minor,
        hooks: T::hooks().iter().map(|h| h.name().to_string()).collect(),
        config: T::default_config(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_lost_to_a_panic_says_so_and_a_busy_one_refuses_reentry() {
        let table: Instances<u32> = Instances::new();
        let id = table.insert(7);
        assert_eq!(table.with(id, |v| Ok(*v + 1)).unwrap(), 8);
        // Re-entering the same instance from inside a call is an error, not a deadlock.
        let inner = table.with(id, |_| Ok(table.with(id, |_| Ok(())).unwrap_err()));
        assert!(inner.unwrap().message().contains("re-entered"));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = table.with(id, |_| -> Result<()> { panic!("boom") });
        }));
        assert!(panicked.is_err());
        let err = table.with(id, |_| Ok(())).unwrap_err();
        assert!(err.message().contains("lost to an earlier panic"), "{err}");
        table.remove(id);
        assert!(table
            .with(id, |_| Ok(()))
            .unwrap_err()
            .message()
            .contains("does not exist"));
    }
}
