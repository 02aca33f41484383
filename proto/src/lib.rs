//! Eddy's wire contracts (package `eddy.v1`). Generated code only: conversions
//! to domain types live in `eddy-sdk`'s `wire` module.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("eddy.v1");
}
