//! Keys and sealing.
//!
//! A repository has one random 32-byte master secret. From it, BLAKE3's
//! `derive_key` gives independent subkeys: the AEAD key, the blob-id key and
//! the chunker's gear seed. The master secret is stored in `keys/<id>`,
//! wrapped under a password through argon2id, or in clear for repositories
//! created with `--insecure-no-encryption` (which then stores blobs unsealed).
//!
//! Sealed bytes are `nonce (24) || ciphertext || tag (16)` with
//! XChaCha20-Poly1305 and a random nonce; 192-bit nonces make random
//! generation safe for any number of blobs.

use super::{BlobId, BlobType, FormatError};
use chacha20::cipher::consts::U10;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use serde::{Deserialize, Serialize};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

const CTX_ENC: &str = "tiervault 2026-11 v1 blob encryption key";
const CTX_ID: &str = "tiervault 2026-11 v1 blob id key";
const CTX_GEAR: &str = "tiervault 2026-11 v1 chunker gear seed";

/// The keys derived from a master secret.
#[derive(Clone)]
pub struct Keys {
    master: [u8; 32],
    cipher: Option<XChaCha>,
    id_key: [u8; 32],
    gear_seed: [u8; 32],
}

impl Keys {
    pub fn from_master(master: [u8; 32], encrypted: bool) -> Self {
        let enc = blake3::derive_key(CTX_ENC, &master);
        Self {
            master,
            cipher: encrypted.then_some(XChaCha(enc)),
            id_key: blake3::derive_key(CTX_ID, &master),
            gear_seed: blake3::derive_key(CTX_GEAR, &master),
        }
    }
    pub fn random(encrypted: bool) -> Self {
        let mut m = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut m);
        Self::from_master(m, encrypted)
    }
    pub fn master(&self) -> &[u8; 32] {
        &self.master
    }
    pub fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }
    pub fn gear_seed(&self) -> &[u8; 32] {
        &self.gear_seed
    }
    /// The id of a blob: keyed BLAKE3 of its plaintext.
    pub fn blob_id(&self, plain: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plain).as_bytes())
    }

    /// Seals `plain` with a random nonce; a no-op copy when unencrypted.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let Some(c) = &self.cipher else {
            return plain.to_vec();
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        c.seal(&nonce, plain, aad)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, FormatError> {
        let Some(c) = &self.cipher else {
            return Ok(sealed.to_vec());
        };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(FormatError::Truncated);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        c.open(nonce.try_into().expect("split at NONCE_LEN"), ct, aad)
    }

    pub fn overhead(&self) -> usize {
        if self.encrypted() {
            SEAL_OVERHEAD
        } else {
            0
        }
    }
}

/// XChaCha20-Poly1305 as draft-irtf-cfrg-xchacha defines it: HChaCha20 of
/// the key and the nonce's first 16 bytes gives a subkey for the IETF
/// ChaCha20-Poly1305 (RFC 8439), whose 12-byte nonce is 4 zero bytes and the
/// nonce's last 8. `ring`'s assembly does the bulk, about twice as fast on
/// x86-64 as the portable RustCrypto code that wrote the first repositories;
/// the bytes are the same (a test checks both ways).
#[derive(Clone)]
struct XChaCha([u8; 32]);

impl XChaCha {
    fn inner(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        let sub = chacha20::hchacha::<U10>(&self.0.into(), nonce[..16].into());
        let key =
            UnboundKey::new(&CHACHA20_POLY1305, &sub).expect("a ChaCha20-Poly1305 key is 32 bytes");
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        (LessSafeKey::new(key), Nonce::assume_unique_for_key(n))
    }

    /// `nonce || ciphertext || tag`.
    fn seal(&self, nonce: &[u8; NONCE_LEN], plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let (key, n) = self.inner(nonce);
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(n, Aad::from(aad), &mut out[NONCE_LEN..])
            .expect("ChaCha20-Poly1305 seals any in-memory buffer");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The plaintext of `ciphertext || tag`, or `Decrypt` if it was altered.
    fn open(&self, nonce: &[u8; NONCE_LEN], ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, FormatError> {
        let (key, n) = self.inner(nonce);
        let mut buf = ct.to_vec();
        let len = key
            .open_in_place(n, Aad::from(aad), &mut buf)
            .map_err(|_| FormatError::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Associated data binding a sealed blob to its type and id, so a blob cannot
/// be swapped for another one inside a pack.
pub fn blob_aad(kind: BlobType, id: &BlobId) -> Vec<u8> {
    let mut a = b"tiervault blob".to_vec();
    a.push(kind as u8);
    a.extend_from_slice(&id.0);
    a
}

/// Associated data for whole objects (pack headers, index files, revisions).
pub fn object_aad(kind: &str) -> Vec<u8> {
    format!("tiervault object {kind}").into_bytes()
}

/// `keys/<id>`: the master secret, wrapped by a password or stored in clear.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyFile {
    pub version: u32,
    /// `argon2id` or `none`.
    pub kdf: String,
    #[serde(default)]
    pub m_cost_kib: u32,
    #[serde(default)]
    pub t_cost: u32,
    #[serde(default)]
    pub p_cost: u32,
    #[serde(default)]
    pub salt: String,
    /// Hex of `nonce || ciphertext || tag` of the master secret, or of the
    /// master secret itself when `kdf` is `none`.
    pub master: String,
    pub created: String,
    pub host: String,
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            // RFC 9106's recommendation: 4 lanes, computed in parallel, so
            // unlocking takes half the time on 2 cores and a quarter on 4
            // for the same memory and work per guess.
            p_cost: 4,
        }
    }
}

fn kek(password: &[u8], salt: &[u8], p: KdfParams) -> Result<[u8; 32], FormatError> {
    let params = argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32))
        .map_err(|_| FormatError::Invalid("argon2 parameters out of range"))?;
    let blocks = params.block_count();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    let done = match KdfMemory::new(blocks) {
        Some(m) => a.hash_password_into_with_memory(password, salt, &mut out, m),
        None => a.hash_password_into(password, salt, &mut out),
    };
    done.map_err(|_| FormatError::Invalid("argon2 rejected its input"))?;
    Ok(out)
}

/// Argon2's working memory, mapped straight from the kernel. Its pages
/// arrive zeroed when first touched, by the lanes' own threads and as huge
/// pages where the kernel allows, instead of being cleared up front by one
/// thread, which is what the allocator does for 64-byte-aligned blocks:
/// that took about 30 ms of a 64 MiB unlock.
struct KdfMemory {
    ptr: std::ptr::NonNull<argon2::Block>,
    len: usize,
}

impl KdfMemory {
    fn new(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<argon2::Block>())?;
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: advice on the mapping just made; refusing it is harmless.
        unsafe { libc::madvise(p, bytes, libc::MADV_HUGEPAGE) };
        Some(Self {
            ptr: std::ptr::NonNull::new(p.cast())?,
            len,
        })
    }
}

impl AsMut<[argon2::Block]> for KdfMemory {
    fn as_mut(&mut self) -> &mut [argon2::Block] {
        // SAFETY: the mapping is page-aligned (more than a block's 64 bytes),
        // `len` blocks long, zero-filled (a valid block), and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for KdfMemory {
    fn drop(&mut self) {
        let bytes = self.len * std::mem::size_of::<argon2::Block>();
        // SAFETY: unmaps exactly the mapping made in `new`, no longer borrowed.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), bytes) };
    }
}

impl KeyFile {
    /// Wraps the master secret of `keys` under `password` (or stores it in
    /// clear when `password` is `None`).
    pub fn wrap(
        keys: &Keys,
        password: Option<&[u8]>,
        p: KdfParams,
        host: &str,
        created: &str,
    ) -> Result<Self, FormatError> {
        let mut kf = KeyFile {
            version: 1,
            kdf: "none".into(),
            m_cost_kib: 0,
            t_cost: 0,
            p_cost: 0,
            salt: String::new(),
            master: hex::encode(keys.master()),
            created: created.into(),
            host: host.into(),
        };
        if let Some(pw) = password {
            let mut salt = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut salt);
            let wrapper = Keys::wrapping(kek(pw, &salt, p)?);
            kf.kdf = "argon2id".into();
            kf.m_cost_kib = p.m_cost_kib;
            kf.t_cost = p.t_cost;
            kf.p_cost = p.p_cost;
            kf.salt = hex::encode(salt);
            kf.master = hex::encode(wrapper.seal(keys.master(), &object_aad("key")));
        }
        Ok(kf)
    }

    pub fn needs_password(&self) -> bool {
        self.kdf != "none"
    }

    /// Recovers the master secret. `Ok(None)` means the password is wrong.
    pub fn unwrap_master(&self, password: Option<&[u8]>) -> Result<Option<[u8; 32]>, FormatError> {
        if self.version > 1 {
            return Err(FormatError::UnsupportedVersion {
                what: "key file",
                found: self.version,
            });
        }
        let blob = hex::decode(&self.master)
            .map_err(|_| FormatError::Invalid("key file master is not hex"))?;
        let plain = match self.kdf.as_str() {
            "none" => blob,
            "argon2id" => {
                // A hostile key file must not make us allocate or spin
                // without bound: 4 GiB and 64 passes are far above any
                // sensible setting.
                if self.m_cost_kib > 4 << 20 || self.t_cost > 64 || self.p_cost > 64 {
                    return Err(FormatError::Invalid(
                        "key derivation parameters out of range",
                    ));
                }
                let salt = hex::decode(&self.salt)
                    .map_err(|_| FormatError::Invalid("key file salt is not hex"))?;
                let p = KdfParams {
                    m_cost_kib: self.m_cost_kib,
                    t_cost: self.t_cost,
                    p_cost: self.p_cost,
                };
                let wrapper = Keys::wrapping(kek(password.unwrap_or_default(), &salt, p)?);
                match wrapper.open(&blob, &object_aad("key")) {
                    Ok(m) => m,
                    Err(FormatError::Decrypt) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            _ => return Err(FormatError::Invalid("unknown key derivation function")),
        };
        Ok(Some(plain.try_into().map_err(|_| {
            FormatError::Invalid("master secret is not 32 bytes")
        })?))
    }
}

impl Keys {
    /// A cipher used only to wrap the master secret under a password key.
    fn wrapping(kek: [u8; 32]) -> Self {
        Self {
            master: [0; 32],
            cipher: Some(XChaCha(kek)),
            id_key: [0; 32],
            gear_seed: [0; 32],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_unwrap() {
        let k = Keys::random(true);
        let p = KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let kf = KeyFile::wrap(&k, Some(b"secret"), p, "h", "t").unwrap();
        assert_eq!(
            kf.unwrap_master(Some(b"secret")).unwrap(),
            Some(*k.master())
        );
        assert_eq!(kf.unwrap_master(Some(b"wrong")).unwrap(), None);
    }

    /// The bytes are RustCrypto's XChaCha20-Poly1305, which sealed the
    /// repositories written before `ring` did: each opens the other's.
    #[test]
    fn sealed_bytes_are_the_reference_xchacha20_poly1305() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let key = [0x5au8; 32];
        let ours = XChaCha(key);
        let reference = XChaCha20Poly1305::new(&key.into());
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut nonce = [0u8; NONCE_LEN];
            rand::thread_rng().fill_bytes(&mut nonce);
            let aad = format!("aad {len}");
            let sealed = ours.seal(&nonce, &plain, aad.as_bytes());
            let theirs = reference
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &plain,
                        aad: aad.as_bytes(),
                    },
                )
                .unwrap();
            assert_eq!(sealed[..NONCE_LEN], nonce);
            assert_eq!(sealed[NONCE_LEN..], theirs[..], "length {len}");
            let opened = ours.open(&nonce, &theirs, aad.as_bytes()).unwrap();
            assert_eq!(opened, plain);
            let mut bad = theirs.clone();
            bad[len / 2] ^= 0x10;
            assert!(matches!(
                ours.open(&nonce, &bad, aad.as_bytes()),
                Err(FormatError::Decrypt)
            ));
        }
    }

    /// draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn sealed_bytes_match_the_draft_test_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x40 + i as u8);
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ct = "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb\
                  731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452\
                  2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9\
                  21f9664c97637da9768812f615c68b13b52e";
        let tag = "c0875924c1c7987947deafd8780acf49";
        let sealed = XChaCha(key).seal(&nonce, plain, &aad);
        assert_eq!(hex::encode(&sealed[NONCE_LEN..]), format!("{ct}{tag}"));
        let opened = XChaCha(key)
            .open(&nonce, &sealed[NONCE_LEN..], &aad)
            .unwrap();
        assert_eq!(opened, plain);
    }

    #[test]
    fn seal_detects_tampering_and_wrong_aad() {
        let k = Keys::random(true);
        let mut s = k.seal(b"hello world", b"a");
        assert_eq!(k.open(&s, b"a").unwrap(), b"hello world");
        assert!(matches!(k.open(&s, b"b"), Err(FormatError::Decrypt)));
        s[30] ^= 1;
        assert!(matches!(k.open(&s, b"a"), Err(FormatError::Decrypt)));
    }
}
