//! `cargo fuzz run parse_shard`: the shard parser must return `Err` on any
//! malformed input and never panic; whatever it accepts must be safe to read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resnet_imagenet::format::ShardLayout;

fuzz_target!(|data: &[u8]| {
    if let Ok(layout) = ShardLayout::parse(data) {
        for i in 0..layout.entries.len() {
            let bytes = layout.record(data, i).expect("validated entries lie inside the data");
            let _ = layout.verify_record(data, i);
            assert_eq!(bytes.len(), layout.entries[i].len as usize);
        }
        let _ = layout.stats(data);
    }
});
