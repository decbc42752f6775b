//! Protocol sniffing on arbitrary first bytes: never panics, decides within
//! `DETECT_MAX` bytes, and never changes its mind as more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::protocol::{detect, Detected, DETECT_MAX};

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for n in 0..=data.len() {
        let d = detect(&data[..n]);
        match decided {
            Some(prev) => assert_eq!(d, prev),
            None if d != Detected::NeedMore => decided = Some(d),
            None => assert!(n < DETECT_MAX),
        }
    }
});
