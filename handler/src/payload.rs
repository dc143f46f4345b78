//! JSON payloads on the wire, with errors a user can act on.
//!
//! The SDK's own `Json<T>` reports a bad body as a serde `Debug` dump. [`Payload`] carries the
//! same JSON but explains what was wrong and what a valid body looks like; the SDK turns a
//! decoding error into a terminal 400, so bad input is never retried.

use bytes::Bytes;
use restate_sdk::serde::{Deserialize, PayloadMetadata, Serialize};
use std::fmt;

/// A JSON payload of type `T`.
pub struct Payload<T>(pub T);

impl<T: serde::Serialize> Serialize for Payload<T> {
    type Error = serde_json::Error;

    fn serialize(&self) -> Result<Bytes, Self::Error> {
        serde_json::to_vec(&self.0).map(Bytes::from)
    }
}

impl<T: serde::de::DeserializeOwned> Deserialize for Payload<T> {
    type Error = BadPayload;

    fn deserialize(bytes: &mut Bytes) -> Result<Self, Self::Error> {
        if bytes.is_empty() {
            return Err(BadPayload(
                "the request body is empty; send a JSON object such as {\"description\": \"a,b\"}"
                    .into(),
            ));
        }
        serde_json::from_slice(bytes).map(Payload).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "the request body is not valid JSON"
            } else {
                "the request body does not have the expected shape"
            };
            BadPayload(format!("{what}: {e}"))
        })
    }
}

impl<T> PayloadMetadata for Payload<T> {}

/// Why a body could not be decoded.
///
/// `Debug` prints the plain message because the SDK formats decoding errors with `{:?}` into the
/// terminal error the caller sees.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPayload(pub String);

impl fmt::Debug for BadPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subtask (or its outcome) with its position in the whole task, as lanes, the ledger and
/// the parts of a run of items carry it: `{"i": 3, "v": …}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Indexed<T> {
    #[serde(rename = "i")]
    pub index: usize,
    #[serde(rename = "v")]
    pub item: T,
}

/// One subtask's result in a batch's answer (`runBatch` answers a list of them, in the order
/// of its input): `{"ok": OUTCOME}`, or `{"error": {"code": 422, "message": "…"}}` for a
/// subtask that failed for good, so that one subtask's failure stays its own.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemResult<O> {
    Ok(O),
    Error { code: u16, message: String },
}

impl<O> ItemResult<O> {
    pub fn into_result(self) -> Result<O, restate_sdk::prelude::TerminalError> {
        match self {
            Self::Ok(outcome) => Ok(outcome),
            Self::Error { code, message } => Err(
                restate_sdk::prelude::TerminalError::new_with_code(code, message),
            ),
        }
    }
}

impl<O> From<Result<O, restate_sdk::prelude::TerminalError>> for ItemResult<O> {
    fn from(result: Result<O, restate_sdk::prelude::TerminalError>) -> Self {
        match result {
            Ok(outcome) => Self::Ok(outcome),
            Err(error) => Self::Error {
                code: error.code(),
                message: error.message().to_owned(),
            },
        }
    }
}
