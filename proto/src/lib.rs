//! Generated gRPC code for Starling's wire protocols.
//!
//! - [`raft`]: node-to-node raft RPCs and forwarded proposals (`raft.proto`).
//! - [`mesh`]: the live stanza mesh between nodes (`mesh.proto`).
//! - [`admin`]: the operator API used by `starling ctl` (`admin.proto`).
//!
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.
#![allow(clippy::all, missing_docs)]

pub mod raft {
    tonic::include_proto!("starling.raft.v1");
}

pub mod mesh {
    tonic::include_proto!("starling.mesh.v1");
}

pub mod admin {
    tonic::include_proto!("starling.admin.v1");
}

/// Encoded `FileDescriptorSet` of every Starling .proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/starling_descriptor.bin"));
