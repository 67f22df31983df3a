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

    /// The wire code (the SDK hides it from authors).
    #[doc(hidden)]
    pub fn code(self) -> i64 {
        match self {
            DType::F32 => 0,
            DType::F64 => 1,
            DType::U32 => 2,
            DType::U8 => 3,
            DType::I64 => 4,
        }
    }

    /// The wire code (the SDK hides it from authors).
    #[doc(hidden)]
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

/// Frames as bytes, for transports that share memory rather than types (wasm):
/// four little-endian u32 counts (tensors, ints, floats, text bytes), then the
/// values, little-endian, then the UTF-8 text.
impl Frame {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + 8 * (self.tensors.len() + self.ints.len() + self.floats.len()) + self.text.len(),
        );
        for n in [
            self.tensors.len(),
            self.ints.len(),
            self.floats.len(),
            self.text.len(),
        ] {
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for t in &self.tensors {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for i in &self.ints {
            out.extend_from_slice(&i.to_le_bytes());
        }
        for f in &self.floats {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Frame> {
        let word = |at: usize| -> Result<u64> {
            match b.get(at..at + 8) {
                Some(s) => Ok(u64::from_le_bytes(s.try_into().expect("8 bytes"))),
                None => bail!(
                    "frame of {} bytes ends inside a value at byte {at}",
                    b.len()
                ),
            }
        };
        if b.len() < 16 {
            bail!(
                "frame of {} bytes is shorter than its 16-byte header",
                b.len()
            );
        }
        let count = |i: usize| {
            u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes")) as usize
        };
        let (nt, ni, nf, ns) = (count(0), count(1), count(2), count(3));
        let values = nt
            .checked_add(ni)
            .and_then(|n| n.checked_add(nf))
            .and_then(|n| n.checked_mul(8));
        let need = values.and_then(|v| v.checked_add(16 + ns));
        if need != Some(b.len()) {
            bail!(
                "frame header announces {nt} tensors, {ni} integers, {nf} floats and {ns} text bytes, but the frame has {} bytes",
                b.len()
            );
        }
        let mut at = 16;
        let mut next = || {
            let w = word(at);
            at += 8;
            w
        };
        let tensors = (0..nt).map(|_| next()).collect::<Result<Vec<u64>>>()?;
        let ints = (0..ni)
            .map(|_| next().map(|w| w as i64))
            .collect::<Result<Vec<i64>>>()?;
        let floats = (0..nf)
            .map(|_| next().map(f64::from_bits))
            .collect::<Result<Vec<f64>>>()?;
        let start = 16 + 8 * (nt + ni + nf);
        let text = match std::str::from_utf8(&b[start..]) {
            Ok(s) => s.to_string(),
            Err(e) => bail!("frame text is not UTF-8: {e}"),
        };
        Ok(Frame {
            tensors,
            ints,
            floats,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_lies_are_refused() {
        let f = Frame {
            tensors: vec![1, u64::MAX],
            ints: vec![-3, 7],
            floats: vec![0.5, f64::NEG_INFINITY],
            text: "é name".into(),
        };
        let b = f.to_bytes();
        assert_eq!(Frame::from_bytes(&b).unwrap(), f);
        assert!(Frame::from_bytes(&b[..b.len() - 1]).is_err());
        assert!(Frame::from_bytes(&b[..10]).is_err());
        // A header that announces more values than the frame holds.
        let mut lie = b.clone();
        lie[0] = 200;
        let err = Frame::from_bytes(&lie).unwrap_err();
        assert!(err.message().contains("announces 200 tensors"), "{err}");
        let mut huge = b.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Frame::from_bytes(&huge).is_err());
    }
}
