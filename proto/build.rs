//! Generates the Rust code of the sync protocol (`proto/kds.proto`), of the proxy identity stream
//! (`proto/identity.proto`) and of the SPIFFE Workload API (`proto/workload.proto`, no package)
//! with the vendored protoc and its well-known types (nothing to install by hand).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Resource payloads may hold Secret data, identity bundles and X.509-SVIDs a private key:
        // their Debug is written by hand, redacted.
        .skip_debug([
            "kmesh.sync.v1.Resource",
            "kmesh.identity.v1.IdentityResponse",
            ".X509SVID",
        ])
        .compile_with_config(
            config,
            &[
                "proto/kds.proto".into(),
                "proto/identity.proto".into(),
                "proto/workload.proto".into(),
            ],
            &[std::path::PathBuf::from("proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=proto/kds.proto");
    println!("cargo:rerun-if-changed=proto/identity.proto");
    println!("cargo:rerun-if-changed=proto/workload.proto");
    Ok(())
}
