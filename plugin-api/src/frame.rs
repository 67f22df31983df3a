//! What crosses the boundary between host and plugin, in both directions and for
//! every transport: a few handles, integers, floats and one string. Each op and
//! each hook documents how it lays out its arguments and its reply in a frame.

use crate::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Frame {
    pub tensors: Vec<u64>,
    pub ints: Vec<i64>,
    pub floats: Vec<f64>,
    pub text: String,
}

impl Frame {
    pub fn tensor(&self, i: usize) -> Result<u64> {
        match self.tensors.get(i) {
            Some(&t) => Ok(t),
            None => bail!("frame has {} tensors, wanted #{i}", self.tensors.len()),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64> {
        match self.ints.get(i) {
            Some(&v) => Ok(v),
            None => bail!("frame has {} integers, wanted #{i}", self.ints.len()),
        }
    }

    pub fn float(&self, i: usize) -> Result<f64> {
        match self.floats.get(i) {
            Some(&v) => Ok(v),
            None => bail!("frame has {} floats, wanted #{i}", self.floats.len()),
        }
    }

    /// A non-negative integer as an index or a size.
    pub fn usize(&self, i: usize) -> Result<usize> {
        let v = self.int(i)?;
        usize::try_from(v)
            .map_err(|_| format!("integer #{i} is {v}, expected a size or an index").into())
    }
}

/// Element types a host tensor may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    /// Token ids and indices.
    U32,
    /// Masks.
    U8,
    I64,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::F32, DType::F64, DType::U32, DType::U8, DType::I64];

    pub fn code(self) -> i64 {
        match self {
            DType::F32 => 0,
            DType::F64 => 1,
            DType::U32 => 2,
            DType::U8 => 3,
            DType::I64 => 4,
        }
    }

    pub fn from_code(code: i64) -> Result<DType> {
        match DType::ALL.into_iter().find(|d| d.code() == code) {
            Some(d) => Ok(d),
            None => bail!("unknown dtype code {code}"),
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 => 1,
        }
    }
}
