//! `stamp-v2` (test-only): stamps `"v": 2` into published objects; see `stamp-v1`.

#[path = "../../stamp-v1/src/stamp.rs"]
mod stamp;

switchyard_plugin_sdk::export_plugin!(stamp::Stamp<2>);
