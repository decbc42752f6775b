//! The SPIFFE identity of a DER certificate (peer certificates are
//! untrusted bytes): never panics; an identity it returns parses back.
#![no_main]

use hbone::cert::identity_from_der;
use hbone::SpiffeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = identity_from_der(data) {
        let again: SpiffeId = id.to_string().parse().expect("identity reparses");
        assert_eq!(again, id);
    }
});
