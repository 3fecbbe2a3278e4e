//! Without the `s3` feature there is no bucket output: this type has no value, so every
//! bucket branch of the store is statically unreachable.

use std::fs::File;

use super::{FileDigests, Want};
use crate::error::Error;

/// A bucket output (none can exist without the `s3` feature).
#[derive(Debug, Clone)]
pub(crate) enum Bucket {}

impl Bucket {
    pub(crate) fn open(spec: &crate::config::BucketSpec) -> Result<Self, Error> {
        Err(Error::Bucket(format!(
            "{}: this haul was built without the `s3` feature",
            spec.url
        )))
    }

    pub(crate) fn record_uploads_in(&mut self, _uploads: &std::path::Path) -> Result<(), Error> {
        match *self {}
    }

    pub(crate) async fn abort_orphans(&self) -> Result<usize, Error> {
        match *self {}
    }

    pub(crate) fn url(&self) -> &str {
        match *self {}
    }

    pub(crate) fn display(&self, _rel: &str) -> String {
        match *self {}
    }

    pub(crate) async fn head(&self, _rel: &str) -> Result<Option<(u64, FileDigests)>, Error> {
        match *self {}
    }

    pub(crate) async fn hash(&self, _rel: &str, _want: Want) -> Result<(u64, FileDigests), Error> {
        match *self {}
    }

    pub(crate) async fn stream(
        &self,
        _total: u64,
        _rel: &str,
        _staging: &str,
        _sha256: Option<[u8; 32]>,
    ) -> Option<Upstream> {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upload(
        &self,
        _file: &File,
        _len: u64,
        _digests: &FileDigests,
        _rel: &str,
        _staging: &str,
        _replace: bool,
        _upstream: Option<Upstream>,
    ) -> Result<(), Error> {
        match *self {}
    }
}

/// A streamed upload (none can exist without the `s3` feature).
#[derive(Debug)]
pub(crate) enum Upstream {}

impl Upstream {
    pub(crate) fn sent(&self) -> u64 {
        match *self {}
    }

    pub(crate) async fn send(&mut self, _chunks: &[bytes::Bytes]) -> bool {
        match *self {}
    }

    pub(crate) async fn abort(self) {
        match self {}
    }

    pub(crate) fn abort_blocking(self) {
        match self {}
    }
}
