//! Generates the coordinator bindings with protox, a pure-Rust protobuf
//! compiler, so that no system `protoc` is needed anywhere.

/// Serialisable with every field optional, so that a log written before a
/// field existed still reads.
const SERDE: &str = "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/coordinator.proto");
    let descriptors = protox::compile(["coordinator.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Generated code is not ours to lint.
        .type_attribute(".", "#[allow(clippy::all, clippy::pedantic)]")
        // The run log keeps these as JSON, field for field, so that a
        // counter added here reaches the log without a second list.
        .type_attribute(".stampede.coordinator.v1.Counters", SERDE)
        .type_attribute(".stampede.coordinator.v1.TokenComparison", SERDE)
        .type_attribute(".stampede.coordinator.v1.ErrorSample", SERDE)
        .type_attribute(".stampede.coordinator.v1.GpuSample", SERDE)
        // Errors by class in a stable order, in the log as on the wire.
        .btree_map(".stampede.coordinator.v1.Counters.errors")
        .compile_fds(descriptors)?;
    Ok(())
}
