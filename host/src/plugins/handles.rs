//! A plugin's handle table: the host-side tensors a plugin's opaque handles name.
//! A handle is a slot and a generation, so a released (stale) or made-up
//! (forged) handle never resolves. Handles made during a hook call are released
//! when it returns unless kept; the table counts live handles and bytes.

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};

/// What a handle names.
#[derive(Clone)]
pub enum Held {
    /// A value made or received during the current hook call.
    Scoped(Tensor),
    /// State the plugin kept across calls (detached, with its own storage).
    State(Tensor),
    /// A model parameter handed to `optimizer.*`: writable there.
    Param { var: Var, name: String },
}

impl Held {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Held::Scoped(t) | Held::State(t) => t,
            Held::Param { var, .. } => var.as_tensor(),
        }
    }
}

struct Slot {
    generation: u32,
    held: Option<Held>,
}

fn bytes_of(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

pub struct HandleTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots made during the current call, released at its end unless kept.
    scoped: Vec<u32>,
    live: usize,
    bytes: usize,
    max_live: usize,
    max_bytes: usize,
}

impl Default for HandleTable {
    fn default() -> HandleTable {
        HandleTable {
            slots: Vec::new(),
            free: Vec::new(),
            scoped: Vec::new(),
            live: 0,
            bytes: 0,
            max_live: usize::MAX,
            max_bytes: usize::MAX,
        }
    }
}

impl HandleTable {
    pub fn new() -> HandleTable {
        HandleTable::default()
    }

    /// Caps on live handles and on the bytes they name (a sandboxed plugin's).
    pub fn with_caps(max_live: usize, max_bytes: usize) -> HandleTable {
        HandleTable {
            max_live,
            max_bytes,
            ..HandleTable::default()
        }
    }

    fn check_bytes(&self, more: usize) -> Result<()> {
        if self.bytes.saturating_add(more) > self.max_bytes {
            bail!(
                "the plugin would hold {} bytes of tensors, over its cap of {} bytes",
                self.bytes.saturating_add(more),
                self.max_bytes
            );
        }
        Ok(())
    }

    pub fn live(&self) -> usize {
        self.live
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn insert(&mut self, held: Held) -> Result<u64> {
        if self.live >= self.max_live {
            bail!(
                "the plugin holds {} live tensor handles, its cap",
                self.max_live
            );
        }
        self.check_bytes(bytes_of(held.tensor()))?;
        self.bytes += bytes_of(held.tensor());
        self.live += 1;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    held: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        // Generations start at 1, so the handle 0 is never valid.
        s.generation = s.generation.wrapping_add(1).max(1);
        if matches!(held, Held::Scoped(_) | Held::Param { .. }) {
            self.scoped.push(slot);
        }
        s.held = Some(held);
        Ok(((s.generation as u64) << 32) | slot as u64)
    }

    /// A scoped value made during this call.
    pub fn scoped(&mut self, t: Tensor) -> Result<u64> {
        self.insert(Held::Scoped(t))
    }

    fn slot_of(&self, handle: u64) -> Result<usize> {
        let (slot, generation) = ((handle & 0xffff_ffff) as usize, (handle >> 32) as u32);
        match self.slots.get(slot) {
            Some(s) if s.generation == generation && s.held.is_some() => Ok(slot),
            _ => bail!(
                "handle {handle:#x} is not a live tensor of this plugin (released when its hook call returned, or forged)"
            ),
        }
    }

    pub fn get(&self, handle: u64) -> Result<&Held> {
        let slot = self.slot_of(handle)?;
        Ok(self.slots[slot].held.as_ref().expect("checked live"))
    }

    pub fn tensor(&self, handle: u64) -> Result<&Tensor> {
        Ok(self.get(handle)?.tensor())
    }

    /// Replaces what a handle names (same handle), keeping the byte count right.
    pub fn replace(&mut self, handle: u64, held: Held) -> Result<()> {
        let slot = self.slot_of(handle)?;
        let old_bytes = bytes_of(
            self.slots[slot]
                .held
                .as_ref()
                .expect("checked live")
                .tensor(),
        );
        self.check_bytes(bytes_of(held.tensor()).saturating_sub(old_bytes))?;
        let s = &mut self.slots[slot];
        let old = s.held.replace(held).expect("checked live");
        self.bytes = self.bytes + bytes_of(s.held.as_ref().expect("just set").tensor())
            - bytes_of(old.tensor());
        Ok(())
    }

    pub fn release(&mut self, handle: u64) -> Result<()> {
        let slot = self.slot_of(handle)?;
        self.drop_slot(slot);
        Ok(())
    }

    fn drop_slot(&mut self, slot: usize) {
        if let Some(h) = self.slots[slot].held.take() {
            self.bytes -= bytes_of(h.tensor());
            self.live -= 1;
            self.free.push(slot as u32);
        }
    }

    /// Keeps a scoped value as state: detached and copied into storage of its own,
    /// so state never aliases a parameter, a gradient or other state.
    pub fn keep(&mut self, handle: u64) -> Result<()> {
        match self.get(handle)? {
            Held::State(_) => Ok(()),
            Held::Param { name, .. } => {
                bail!("handle {handle:#x} is the parameter {name}: parameters cannot be kept as state")
            }
            Held::Scoped(t) => {
                let t = t.detach().copy()?;
                self.replace(handle, Held::State(t))
            }
        }
    }

    /// Ends a hook call: releases every handle it made that was not kept.
    pub fn end_call(&mut self) {
        let scoped = std::mem::take(&mut self.scoped);
        for slot in scoped {
            let slot = slot as usize;
            if matches!(
                self.slots[slot].held,
                Some(Held::Scoped(_) | Held::Param { .. })
            ) {
                self.drop_slot(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(n: usize) -> Tensor {
        Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn scoped_handles_die_with_the_call_and_kept_ones_live_on() {
        let mut table = HandleTable::new();
        let a = table.scoped(t(4)).unwrap();
        let b = table.scoped(t(8)).unwrap();
        table.keep(b).unwrap();
        assert_eq!((table.live(), table.bytes()), (2, 48));
        table.end_call();
        assert_eq!((table.live(), table.bytes()), (1, 32));
        let err = table.tensor(a).unwrap_err().to_string();
        assert!(err.contains("not a live tensor"), "{err}");
        assert_eq!(table.tensor(b).unwrap().dims(), &[8]);
        // The freed slot is reused with a new generation: the old handle stays dead.
        let c = table.scoped(t(2)).unwrap();
        assert_eq!(c & 0xffff_ffff, a & 0xffff_ffff);
        assert_ne!(c, a);
        assert!(table.tensor(a).is_err());
        assert!(table.tensor(0).is_err());
        assert!(table.tensor(0xdead_beef_0000_0001).is_err());
        table.release(b).unwrap();
        assert!(table.tensor(b).is_err());
    }

    #[test]
    fn caps_on_handles_and_bytes_are_errors() {
        let mut table = HandleTable::with_caps(2, 40);
        table.scoped(t(4)).unwrap();
        table.scoped(t(4)).unwrap();
        let err = table.scoped(t(1)).unwrap_err().to_string();
        assert!(err.contains("2 live tensor handles"), "{err}");
        table.end_call();
        let err = table.scoped(t(11)).unwrap_err().to_string();
        assert!(
            err.contains("44 bytes") && err.contains("cap of 40"),
            "{err}"
        );
        assert_eq!(table.live(), 0);
    }
}
