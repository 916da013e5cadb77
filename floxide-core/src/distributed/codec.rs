//! How the runtime stores user values: JSON bytes (a backend never sees user types).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::distributed::DistributedError;
use crate::FloxideError;

/// Serializes a value for the backend.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

/// Deserializes stored bytes.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// A codec failure as the runtime reports it.
pub(crate) fn codec_error(message: String) -> FloxideError {
    FloxideError::Distributed(DistributedError::Codec(message))
}
