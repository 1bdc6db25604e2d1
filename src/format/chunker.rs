//! Content-defined chunking: FastCDC (2020) with normalized chunking, level 1.
//!
//! The gear table is not the published one: its 256 entries are the first
//! 2048 bytes of the BLAKE3 XOF of the repository's gear seed, so chunk
//! boundaries do not leak which well-known files a repository holds.
//!
//! A cut is searched from `MIN_SIZE`. Up to `AVG_SIZE` the stricter mask
//! (21 bits) applies, after it the looser one (19 bits), and `MAX_SIZE`
//! forces a cut. The masks test the *high* bits of the gear hash, which
//! depend on the last 64 bytes read.

pub const MIN_SIZE: usize = 256 * 1024;
pub const AVG_SIZE: usize = 1024 * 1024;
pub const MAX_SIZE: usize = 4 * 1024 * 1024;

const AVG_BITS: u32 = 20;
const MASK_S: u64 = !0u64 << (64 - (AVG_BITS + 1));
const MASK_L: u64 = !0u64 << (64 - (AVG_BITS - 1));

#[derive(Clone)]
pub struct Chunker {
    gear: Box<[u64; 256]>,
}

impl Chunker {
    pub fn new(seed: &[u8; 32]) -> Self {
        let mut bytes = [0u8; 256 * 8];
        blake3::Hasher::new_keyed(seed)
            .finalize_xof()
            .fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (i, g) in gear.iter_mut().enumerate() {
            *g = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        Self { gear }
    }

    /// Length of the first chunk of `data`. When `data` is shorter than
    /// `MAX_SIZE` and more input follows, the caller must supply more first:
    /// this function treats the end of `data` as the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let n = data.len();
        if n <= MIN_SIZE {
            return n;
        }
        let end = n.min(MAX_SIZE);
        let normal = end.min(AVG_SIZE);
        let mut h = 0u64;
        let mut i = MIN_SIZE;
        while i < normal {
            h = (h << 1).wrapping_add(self.gear[data[i] as usize]);
            if h & MASK_S == 0 {
                return i + 1;
            }
            i += 1;
        }
        while i < end {
            h = (h << 1).wrapping_add(self.gear[data[i] as usize]);
            if h & MASK_L == 0 {
                return i + 1;
            }
            i += 1;
        }
        end
    }

    /// Splits a complete buffer into chunk lengths.
    pub fn split(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let c = self.cut(data);
            out.push(c);
            data = &data[c..];
        }
        out
    }

    /// Reads `len` bytes from `r` and calls `f` with each chunk in order.
    /// Holds at most `2 * MAX_SIZE` bytes; each byte is copied at most
    /// twice (out into its chunk, and once when the window slides).
    pub fn stream<R: std::io::Read>(
        &self,
        r: &mut R,
        mut len: u64,
        mut f: impl FnMut(Vec<u8>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; (2 * MAX_SIZE as u64).min(len) as usize];
        let (mut start, mut end) = (0usize, 0usize);
        loop {
            // Refill once less than a full MAX_SIZE window remains.
            if end - start < MAX_SIZE && len > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < buf.len() && len > 0 {
                    let want = ((buf.len() - end) as u64).min(len) as usize;
                    let got = read_full(r, &mut buf[end..end + want])?;
                    end += got;
                    if got < want {
                        len = 0; // the file shrank while we read it
                    } else {
                        len -= got as u64;
                    }
                }
            }
            if start == end {
                return Ok(());
            }
            let c = self.cut(&buf[start..end]);
            f(buf[start..start + c].to_vec())?;
            start += c;
        }
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
pub fn read_full<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    #[test]
    fn sizes_are_bounded_and_average_near_target() {
        let c = Chunker::new(&[7; 32]);
        let data = random(64 * 1024 * 1024, 1);
        let cuts = c.split(&data);
        assert_eq!(cuts.iter().sum::<usize>(), data.len());
        for &l in &cuts[..cuts.len() - 1] {
            assert!((MIN_SIZE..=MAX_SIZE).contains(&l), "chunk of {l} bytes");
        }
        let avg = data.len() / cuts.len();
        assert!((AVG_SIZE / 2..AVG_SIZE * 2).contains(&avg), "average {avg}");
    }

    #[test]
    fn boundaries_resynchronise_after_an_insert() {
        let c = Chunker::new(&[7; 32]);
        let data = random(24 * 1024 * 1024, 2);
        let mut edited = b"a few inserted bytes".to_vec();
        edited.extend_from_slice(&data);
        let ends = |v: &[u8]| -> std::collections::HashSet<usize> {
            let mut pos = v.len();
            c.split(v)
                .iter()
                .rev()
                .map(|l| {
                    let e = pos;
                    pos -= l;
                    e
                })
                .map(|e| v.len() - e)
                .collect()
        };
        // Cut points counted from the end must mostly agree.
        let a = ends(&data);
        let b = ends(&edited);
        assert!(a.intersection(&b).count() >= a.len() - 2);
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = random(16 * 1024 * 1024, 3);
        assert_ne!(
            Chunker::new(&[1; 32]).split(&data),
            Chunker::new(&[2; 32]).split(&data)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn stream_equals_split(len in 0usize..12_000_000, seed: u64, read_size in 1usize..3_000_000) {
            let c = Chunker::new(&[9; 32]);
            let data = random(len, seed);
            struct Dribble<'a>(&'a [u8], usize);
            impl std::io::Read for Dribble<'_> {
                fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                    let n = b.len().min(self.1).min(self.0.len());
                    b[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut got = Vec::new();
            c.stream(&mut Dribble(&data, read_size), len as u64, |ch| { got.push(ch); Ok(()) }).unwrap();
            let lens: Vec<usize> = got.iter().map(Vec::len).collect();
            prop_assert_eq!(lens, c.split(&data));
            prop_assert_eq!(got.concat(), data);
        }
    }
}
