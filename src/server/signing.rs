//! Short-lived signed tile URLs: how a token holder shows its audience's
//! tiles in an image-tile client (QGIS, Leaflet, MapLibre), which cannot
//! send an `Authorization` header. The token never goes into a URL: the
//! holder asks for a URL signed with a key of this data dir, valid for one
//! bin of one release until an expiry.
//!
//! The signature covers the release, the `bin=` value as written in the URL
//! and the expiry (`hexflow-tile-url|v2|…`). URLs signed before the bin was
//! covered (v1, release and expiry only) are refused like any bad signature:
//! they lived a day at most, and accepting them until then would keep the
//! bin open to change; their holders ask for a new URL.
//!
//! The key is 32 random bytes in `<data-dir>/secrets/tile-url.key` (mode
//! 0600), made on first use and shared by every server on the data dir;
//! deleting it and restarting the servers revokes every signed URL.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::Problem;

/// Longest validity of a signed URL.
pub const MAX_TTL_S: i64 = 86_400;
/// Validity when none is asked.
pub const DEFAULT_TTL_S: i64 = 3_600;

/// The data dir's signing key, made on first use (read once per process:
/// [`super::AppState::tile_key`]).
pub fn key(data_dir: &Path) -> Result<Vec<u8>, Problem> {
    let path = data_dir.join("secrets").join("tile-url.key");
    if let Ok(k) = std::fs::read(&path)
        && k.len() == 32
    {
        return Ok(k);
    }
    let k = crate::util::random_bytes::<32>()
        .map_err(|e| Problem::internal("signing key", e))?
        .to_vec();
    let dir = path.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(dir).map_err(|e| Problem::internal("signing key", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    // Written aside and renamed: two servers making it at once keep one.
    let tmp = dir.join(format!(".tile-url.key.{}", std::process::id()));
    std::fs::write(&tmp, &k).map_err(|e| Problem::internal("signing key", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    if std::fs::hard_link(&tmp, &path).is_err() {
        // Another process won the race: use its key.
        let _ = std::fs::remove_file(&tmp);
        return std::fs::read(&path).map_err(|e| Problem::internal("signing key", e));
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(k)
}

/// What a signed URL grants: one bin of one release until an expiry.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub release_id: &'a str,
    /// The URL's `bin=` value exactly as written (empty when absent).
    pub bin: &'a str,
    /// Unix seconds.
    pub expires: i64,
}

fn mac(key: &[u8], g: Grant<'_>) -> Hmac<Sha256> {
    // A 32-byte key is always accepted.
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    // Release ids and bins hold no `|`, so the fields cannot run together.
    m.update(format!("hexflow-tile-url|v2|{}|{}|{}", g.release_id, g.bin, g.expires).as_bytes());
    m
}

/// The signature of a URL granting `g`.
pub fn sign(key: &[u8], g: Grant<'_>) -> String {
    crate::util::hex(&mac(key, g).finalize().into_bytes())
}

/// Whether `sig` signs `g` and `g` has not expired (compared in constant
/// time).
pub fn verify(key: &[u8], g: Grant<'_>, sig: &str, now: i64) -> bool {
    if g.expires < now || sig.len() != 64 {
        return false;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(sig.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    bytes.is_some_and(|b| mac(key, g).verify_slice(&b).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant<'a>(release_id: &'a str, bin: &'a str, expires: i64) -> Grant<'a> {
        Grant {
            release_id,
            bin,
            expires,
        }
    }

    #[test]
    fn a_signature_holds_for_its_release_and_bin_until_it_expires_only() {
        let key = [7u8; 32];
        let sig = sign(&key, grant("r-1", "3", 1_000));
        assert!(verify(&key, grant("r-1", "3", 1_000), &sig, 999));
        assert!(!verify(&key, grant("r-1", "3", 1_000), &sig, 1_001), "expired");
        assert!(!verify(&key, grant("r-2", "3", 1_000), &sig, 999), "another release");
        assert!(!verify(&key, grant("r-1", "4", 1_000), &sig, 999), "another bin");
        assert!(!verify(&key, grant("r-1", "", 1_000), &sig, 999), "no bin");
        assert!(!verify(&key, grant("r-1", "3", 2_000), &sig, 999), "a later expiry");
        assert!(!verify(&[8u8; 32], grant("r-1", "3", 1_000), &sig, 999), "another key");
        assert!(!verify(&key, grant("r-1", "3", 1_000), "zz", 999));
    }

    #[test]
    fn a_signature_made_before_bins_were_covered_is_refused() {
        let key = [7u8; 32];
        let mut v1 = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("key");
        v1.update(b"hexflow-tile-url|r-1|1000");
        let old = crate::util::hex(&v1.finalize().into_bytes());
        assert!(!verify(&key, grant("r-1", "3", 1_000), &old, 999));
        assert!(!verify(&key, grant("r-1", "", 1_000), &old, 999));
    }
}
