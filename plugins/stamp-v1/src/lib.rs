//! `stamp-v1` (test-only): stamps `"v": 1` into published objects; its twin `stamp-v2` stamps
//! `"v": 2`. The hot-swap tests swap one for the other under load.

switchyard_plugin_sdk::export_plugin!(stamp::Stamp<1>);

#[cfg(test)]
mod tests {
    use switchyard_plugin_sdk::testing::Instance;
    use switchyard_plugin_sdk::{Identity, PublishDecision};

    #[test]
    fn stamps_its_version() {
        let p = Instance::<stamp::Stamp<1>>::init("{}").unwrap();
        match p.publish(&Identity::anonymous(), "s", r#"{"a":1}"#) {
            PublishDecision::Forward(out) => assert_eq!(out[0].data, r#"{"a":1,"v":1}"#),
            other => panic!("{other:?}"),
        }
    }
}
