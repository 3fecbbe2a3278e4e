//! Integration tests of the haul library against a real nginx and haul's fault server.

mod archive;
mod faults;
mod input;
mod polite;
mod props;
mod regress;
mod safety;
mod serve;
mod split;
mod support;
