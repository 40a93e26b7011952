use super::*;
use proptest::prelude::*;

fn meta(mean_size: u32) -> ShardMeta {
    ShardMeta {
        split: "train".into(),
        shard_index: 3,
        first_record: 100,
        input_start: 120,
        input_end: 125,
        skipped: vec![SkippedFile {
            path: "train/n0/x.JPEG".into(),
            reason: "truncated".into(),
        }],
        mean_size,
        fingerprint: "abc".into(),
    }
}

fn entry(label: u32) -> IndexEntry {
    IndexEntry {
        offset: 0,
        len: 0,
        label,
        width: 10 + label,
        height: 7,
        crc32: 0,
        encoding: Encoding::Jpeg,
        origin: Origin(Origin::RESIZED | Origin::FROM_CMYK),
    }
}

fn sample_shard(records: &[Vec<u8>], mean_size: u32) -> Vec<u8> {
    let recs: Vec<(IndexEntry, &[u8])> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (entry(i as u32), r.as_slice()))
        .collect();
    let n = stats_len_for(mean_size).unwrap() as usize / 8;
    let stats: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
    serialize_shard(&recs, &meta(mean_size), &stats)
}

#[test]
fn round_trip() {
    let records = vec![b"hello".to_vec(), vec![], vec![7u8; 1000]];
    let data = sample_shard(&records, 2);
    let layout = ShardLayout::parse(&data).unwrap();
    assert_eq!(layout.entries.len(), 3);
    assert_eq!(layout.meta, meta(2));
    for (i, r) in records.iter().enumerate() {
        assert_eq!(layout.record(&data, i).unwrap(), r.as_slice());
        assert_eq!(layout.entries[i].offset % DEFAULT_ALIGNMENT as u64, 0);
        assert_eq!(layout.entries[i].label, i as u32);
        layout.verify_record(&data, i).unwrap();
    }
    assert_eq!(layout.stats(&data)[3], 1.5);
    assert_eq!(layout.stats(&data).len(), STATS_SCALARS + 12);
}

#[test]
fn record_corruption_is_detected_by_verify_only() {
    let data = sample_shard(&[vec![1u8; 100], vec![2u8; 100]], 1);
    let layout = ShardLayout::parse(&data).unwrap();
    let mut bad = data.clone();
    bad[layout.entries[1].offset as usize + 5] ^= 0x10;
    let layout2 = ShardLayout::parse(&bad).unwrap();
    layout2.verify_record(&bad, 0).unwrap();
    assert!(matches!(
        layout2.verify_record(&bad, 1),
        Err(FormatError::Checksum { what: "record", .. })
    ));
}

#[test]
fn header_errors_are_named() {
    let data = sample_shard(&[vec![1u8; 10]], 1);
    assert_eq!(
        ShardLayout::parse(b"nope").unwrap_err(),
        FormatError::BadMagic
    );
    assert!(matches!(
        ShardLayout::parse(&data[..60]),
        Err(FormatError::Truncated { what: "header", .. })
    ));
    let mut v2 = data.clone();
    v2[8] = 2;
    assert!(matches!(
        ShardLayout::parse(&v2),
        Err(FormatError::UnsupportedVersion {
            found: 2,
            expected: 1
        })
    ));
    let mut h = data.clone();
    h[20] ^= 1;
    assert!(matches!(
        ShardLayout::parse(&h),
        Err(FormatError::Checksum { what: "header", .. })
    ));
    assert!(matches!(
        ShardLayout::parse(&data[..data.len() - 1]),
        Err(FormatError::Truncated { what: "stats", .. })
    ));
}

#[test]
fn origin_describe() {
    assert_eq!(Origin::ORIGINAL.describe(), "original");
    assert_eq!(
        Origin(Origin::RESIZED | Origin::FROM_GRAY).describe(),
        "resized+from-gray"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any records round-trip byte for byte, aligned.
    #[test]
    fn prop_round_trip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12), mean in 0u32..4) {
        let data = sample_shard(&records, mean);
        let layout = ShardLayout::parse(&data).unwrap();
        prop_assert_eq!(layout.entries.len(), records.len());
        for (i, r) in records.iter().enumerate() {
            prop_assert_eq!(layout.record(&data, i).unwrap(), r.as_slice());
            prop_assert!(layout.verify_record(&data, i).is_ok());
        }
    }

    /// Flipping any byte, or cutting the file anywhere, never panics; it is
    /// either detected at parse time or (inside a record's payload, or in
    /// padding) by the record checksum or not at all when it only touched padding.
    #[test]
    fn prop_corruption_never_panics(pos in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
        let data = sample_shard(&[vec![9u8; 77], vec![3u8; 5]], 1);
        let mut flipped = data.clone();
        let p = pos.index(flipped.len());
        flipped[p] ^= 1 << bit;
        if let Ok(layout) = ShardLayout::parse(&flipped) {
            // Only record payloads or alignment padding can change without a parse error.
            let in_record = layout.entries.iter().any(|e| (e.offset as usize..e.offset as usize + e.len as usize).contains(&p));
            if in_record {
                prop_assert!((0..layout.entries.len()).any(|i| layout.verify_record(&flipped, i).is_err()));
            }
        }
        let c = cut.index(data.len());
        prop_assert!(ShardLayout::parse(&data[..c]).is_err());
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ShardLayout::parse(&bytes);
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = ShardLayout::parse(&with_magic);
    }
}
