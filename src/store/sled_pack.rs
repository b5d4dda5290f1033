//! The sled store's large values, compressed: the records of an outbox batch (its table
//! of sequences stays as it is, see `sled_outbox.rs`), staged parts and snapshot
//! buckets are JSON records side by side, which LZ4 shrinks several times over, and
//! sled 0.34's cost is per byte it writes (its log, then every rewrite of the page the
//! value sits on). A value smaller than [`PACK_MIN`], or one that does not shrink, is
//! written as it is, so every value an earlier release wrote still reads.
//!
//! A packed value is `0xff 'Z'`, the original length (u32 big-endian), then the LZ4
//! block. No unpacked value starts with those bytes: a bucket, a staged part and a
//! batch's records start with a big-endian u32 length, which would be over 4 GiB.

use sled::IVec;

use super::StoreError;

const PACKED: [u8; 2] = [0xff, b'Z'];
const HEADER: usize = 6;

/// Values shorter than this are written as they are: a small state or a single record
/// gains little, and it keeps them readable in a raw dump.
pub(super) const PACK_MIN: usize = 512;

/// A packed value claiming more than this is damaged: sled itself keeps values far
/// smaller, and the claim is read before anything is allocated.
const UNPACKED_MAX: usize = 1 << 30;

/// `value` as it is to be written: packed if that makes it smaller.
pub(super) fn pack(value: Vec<u8>) -> Vec<u8> {
    if value.len() < PACK_MIN || value.len() > UNPACKED_MAX {
        return value;
    }
    let mut out = vec![0; HEADER + lz4_flex::block::get_maximum_output_size(value.len())];
    out[..2].copy_from_slice(&PACKED);
    out[2..HEADER].copy_from_slice(&(value.len() as u32).to_be_bytes());
    match lz4_flex::block::compress_into(&value, &mut out[HEADER..]) {
        Ok(n) if HEADER + n < value.len() => {
            out.truncate(HEADER + n);
            out
        }
        _ => value,
    }
}

/// Whether `value` was written packed.
pub(super) fn is_packed(value: &[u8]) -> bool {
    value.starts_with(&PACKED)
}

/// `value` as it was before [`pack`] (the same bytes when it was written unpacked).
/// `key` names the record in the error of a value that does not unpack.
pub(super) fn unpack(value: IVec, key: impl FnOnce() -> String) -> Result<IVec, StoreError> {
    if !is_packed(&value) {
        return Ok(value);
    }
    let corrupt = |reason: String| StoreError::Corrupt { key: key(), reason };
    let Some(len) = value.get(2..HEADER) else {
        return Err(corrupt("compressed record cut short".into()));
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > UNPACKED_MAX {
        return Err(corrupt(format!(
            "compressed record claims {len} bytes, more than any record written"
        )));
    }
    let mut out = vec![0; len];
    match lz4_flex::block::decompress_into(&value[HEADER..], &mut out) {
        Ok(n) if n == len => Ok(IVec::from(out)),
        Ok(n) => Err(corrupt(format!(
            "compressed record holds {n} bytes, not the {len} it claims (cut short or damaged)"
        ))),
        Err(e) => Err(corrupt(format!(
            "compressed record does not decompress ({e}): cut short or damaged"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_like(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend_from_slice(format!(r#"{{"id":{i},"name":"item number {i}"}}"#).as_bytes());
        }
        v
    }

    fn unpacked(v: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        unpack(IVec::from(v), || "k".into()).map(|v| v.to_vec())
    }

    #[test]
    fn records_shrink_and_come_back_byte_for_byte() {
        let plain = json_like(100);
        let packed = pack(plain.clone());
        assert!(packed.starts_with(&PACKED));
        assert!(packed.len() * 3 < plain.len(), "{} bytes", packed.len());
        assert_eq!(unpacked(packed).unwrap(), plain);
    }

    #[test]
    fn small_and_incompressible_values_stay_as_they_are() {
        let small = json_like(3);
        assert!(small.len() < PACK_MIN);
        assert_eq!(pack(small.clone()), small);
        // Bytes without repeats (a hash chain) do not shrink.
        let mut noise = Vec::new();
        let mut h = [7u8; 32];
        while noise.len() < 4096 {
            h = <sha2::Sha256 as sha2::Digest>::digest(h).into();
            noise.extend_from_slice(&h);
        }
        assert_eq!(pack(noise.clone()), noise);
        // What was written unpacked reads as it is.
        assert_eq!(unpacked(noise.clone()).unwrap(), noise);
        assert_eq!(unpacked(Vec::new()).unwrap(), Vec::<u8>::new());
    }

    /// A commit's bucket and batch are written packed, and a database an earlier release
    /// wrote (every value as it is) reads the same.
    #[test]
    fn the_store_packs_its_records_and_reads_unpacked_ones_alike() {
        use crate::store::tests::{created, events_commit, open, seen};
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut commit = events_commit(
            "s",
            0,
            (0..40)
                .map(|i| created("s", 1, &i.to_string(), &["t"]))
                .collect(),
        );
        commit.upserts = (0..40)
            .map(|i| {
                let id = i.to_string();
                let item = serde_json::json!({"id": id, "name": format!("item number {i}")});
                (id, seen(&item))
            })
            .collect();
        commit.item_count = 40;
        store.commit_poll(commit).unwrap();
        let snapshot = store.snapshot("s").unwrap();
        let pending = store.pending("t", None, usize::MAX).unwrap();
        assert_eq!((snapshot.len(), pending.len()), (40, 40));
        // Rewrite every packed value as the release before wrote it.
        let (mut packed, mut batches) = (0, 0);
        let snap = store.snap().clone();
        for kv in snap.iter() {
            let (k, v) = kv.unwrap();
            if is_packed(&v) {
                packed += 1;
                let plain = unpack(v, || "k".into()).unwrap();
                assert!(!plain.starts_with(&PACKED));
                snap.insert(k, plain).unwrap();
            }
        }
        for kv in store.outbox.iter() {
            let (k, v) = kv.unwrap();
            if let Some(plain) = crate::store::sled_outbox::unpacked_batch(&k, &v) {
                batches += 1;
                store.outbox.insert(k, plain).unwrap();
            }
        }
        assert!(
            packed >= 1 && batches >= 1,
            "{packed} buckets, {batches} batches packed"
        );
        drop((snap, store));
        let store = open(dir.path());
        assert_eq!(store.snapshot("s").unwrap(), snapshot);
        assert_eq!(store.pending("t", None, usize::MAX).unwrap(), pending);
    }

    #[test]
    fn a_damaged_packed_value_is_refused_naming_its_key() {
        let packed = pack(json_like(100));
        let err = |v: Vec<u8>| match unpack(IVec::from(v), || "snap-v1/s/3".into()) {
            Err(StoreError::Corrupt { key, reason }) => format!("{key}: {reason}"),
            other => panic!("{other:?}"),
        };
        let cut = err(packed[..packed.len() - 10].to_vec());
        assert!(cut.starts_with("snap-v1/s/3: "), "{cut}");
        assert!(cut.contains("cut short or damaged"), "{cut}");
        assert!(err(packed[..4].to_vec()).contains("cut short"));
        let mut longer = packed.clone();
        longer[2..HEADER].copy_from_slice(&(1u32 << 31).to_be_bytes());
        assert!(err(longer).contains("claims"));
        let mut shorter = packed;
        let claimed = u32::from_be_bytes(shorter[2..HEADER].try_into().unwrap());
        shorter[2..HEADER].copy_from_slice(&(claimed + 5).to_be_bytes());
        assert!(err(shorter).contains("cut short or damaged"));
    }
}
