//! Record batches: headers, every codec's decompressor (bounded), records and their headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::kafka::{DecodeOptions, PartitionRecords, records::Decompressor};

fuzz_target!(|data: &[u8]| {
    let opts = DecodeOptions {
        keys: true,
        max_decompressed: 1 << 20,
        ..DecodeOptions::default()
    };
    let mut d = Decompressor::new(opts.max_decompressed);
    let p = PartitionRecords::collect(data, &mut d, &opts);
    // Everything kept comes from the input or a bounded decompression of it.
    assert!(p.arena.len() <= data.len() + (1 << 20) * (p.batches.len() + 1));
    for r in &p.records {
        let _ = p.headers_of(r).count();
        let _ = p.absolute_offset(r, Some(0));
    }
});
