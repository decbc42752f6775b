//! One resource's bytes → a domain value, by type URL.

use prost::Message;
use proto::discovery::Resource;
use proto::workload::address::Type as AddressType;
use proto::{
    mesh as pb_mesh, security as pb_sec, workload as pb, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
    L7_AUTHORIZATION_TYPE_URL, ROUTE_TYPE_URL,
};

use super::{AddressEntry, Decoded, ResourceError};
use crate::l7policy::L7Policy;
use crate::route::Route;
use crate::xds::convert::{self, ConvertError};

/// Decodes and converts one resource of `type_url`.
pub(super) fn decode(type_url: &str, r: &Resource) -> Result<Decoded, ResourceError> {
    let any = r.resource.as_ref().ok_or(ResourceError::Empty)?;
    let want = match type_url {
        ADDRESS_TYPE_URL => ADDRESS_TYPE_URL,
        AUTHORIZATION_TYPE_URL => AUTHORIZATION_TYPE_URL,
        ROUTE_TYPE_URL => ROUTE_TYPE_URL,
        L7_AUTHORIZATION_TYPE_URL => L7_AUTHORIZATION_TYPE_URL,
        other => return Err(ResourceError::UnknownTypeUrl(other.to_owned())),
    };
    if any.type_url != want {
        return Err(ResourceError::WrongType {
            got: any.type_url.clone(),
            want,
        });
    }
    let decode_err = |e: prost::DecodeError| ResourceError::Decode(e.to_string());
    let bytes = any.value.as_slice();
    match want {
        ADDRESS_TYPE_URL => {
            let addr = pb::Address::decode(bytes).map_err(decode_err)?;
            let entry = match addr.r#type {
                Some(AddressType::Workload(w)) => {
                    AddressEntry::Workload(convert::workload(w)?.into())
                }
                Some(AddressType::Service(s)) => {
                    AddressEntry::Service(Box::new(convert::service(&s)?))
                }
                None => return Err(ConvertError::Missing("type").into()),
            };
            Ok(Decoded::Address(entry))
        }
        AUTHORIZATION_TYPE_URL => {
            let a = pb_sec::Authorization::decode(bytes).map_err(decode_err)?;
            Ok(Decoded::Authorization(convert::authorization(&a)?))
        }
        ROUTE_TYPE_URL => {
            let r = pb_mesh::Route::decode(bytes).map_err(decode_err)?;
            Ok(Decoded::Route(Route::try_from(&r)?))
        }
        _ => {
            let a = pb_mesh::L7Authorization::decode(bytes).map_err(decode_err)?;
            Ok(Decoded::L7Policy(L7Policy::try_from(&a)?))
        }
    }
}
