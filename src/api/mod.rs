//! Firecracker's REST API on a Unix socket: the same routes, bodies, status codes and
//! `{"fault_message": ...}` errors, so Firecracker's clients drive spry unchanged.
//!
//! Three steps, on two threads: the API thread ([`server`]) speaks HTTP and turns
//! each request into a typed action ([`routes`], [`action`]); the action crosses to
//! the VMM thread ([`channel`]), where a controller ([`controller`]) carries it out
//! and sends the answer back.

pub mod action;
pub mod channel;
pub mod controller;
pub mod routes;
pub mod server;
pub mod socket;
