//! Byte-level encoding shared by every binary object in the repository
//! (trees, revisions, pack headers, index files).
//!
//! Integers are little-endian; lengths and counts are unsigned LEB128 varints.
//! The reader never trusts a length: every read is bounds-checked so that a
//! corrupt or hostile object yields `FormatError::Truncated`/`Invalid`, never a
//! panic or an unbounded allocation.

use super::FormatError;

/// Appends primitives to a byte vector.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return self;
            }
            self.buf.push(byte | 0x80);
        }
    }
    /// Length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads primitives from a byte slice, bounds-checked.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.raw(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.raw(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(FormatError::Invalid("varint exceeds 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FormatError::Invalid("varint longer than 10 bytes"))
    }
    /// A count of items that each take at least `min_item` bytes; rejects
    /// counts that could not fit in the remaining input.
    pub fn count(&mut self, min_item: usize) -> Result<usize, FormatError> {
        let n = self.varint()?;
        if n > (self.remaining() / min_item.max(1)) as u64 {
            return Err(FormatError::Truncated);
        }
        Ok(n as usize)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.count(1)?;
        self.raw(n)
    }
    pub fn end(&self) -> Result<(), FormatError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(FormatError::Invalid("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_roundtrip(v: u64) {
            let mut e = Enc::new();
            e.varint(v);
            let b = e.finish();
            let mut d = Dec::new(&b);
            prop_assert_eq!(d.varint().unwrap(), v);
            prop_assert!(d.end().is_ok());
        }

        #[test]
        fn decoder_never_panics(data: Vec<u8>) {
            let mut d = Dec::new(&data);
            let _ = d.bytes();
            let _ = d.varint();
            let _ = d.u64();
        }
    }
}
