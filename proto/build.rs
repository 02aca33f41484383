#![allow(unsafe_code)] // set_var before any thread exists
//! Generates the tonic/prost code for `eddy/v1/*.proto` with a vendored protoc,
//! so no system protoc is ever needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=eddy");
    let protos = [
        "eddy/v1/common.proto",
        "eddy/v1/control.proto",
        "eddy/v1/exchange.proto",
        "eddy/v1/raft.proto",
    ];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["."])?;
    Ok(())
}
