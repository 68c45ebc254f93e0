//! Generates the coordinator bindings with protox, a pure-Rust protobuf
//! compiler, so that no system `protoc` is needed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/coordinator.proto");
    let descriptors = protox::compile(["coordinator.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Generated code is not ours to lint.
        .type_attribute(".", "#[allow(clippy::all, clippy::pedantic)]")
        .compile_fds(descriptors)?;
    Ok(())
}
