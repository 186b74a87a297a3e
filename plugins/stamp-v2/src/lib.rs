//! `stamp-v2` (test-only): stamps `"v": 2` into published objects; see `stamp-v1`.

switchyard_plugin_sdk::export_plugin!(stamp::Stamp<2>);

#[cfg(test)]
mod tests {
    use switchyard_plugin_sdk::testing::Instance;
    use switchyard_plugin_sdk::{Identity, PublishDecision};

    #[test]
    fn stamps_its_version() {
        let p = Instance::<stamp::Stamp<2>>::init("{}").unwrap();
        match p.publish(&Identity::anonymous(), "s", r#"{"a":1}"#) {
            PublishDecision::Forward(out) => assert_eq!(out[0].data, r#"{"a":1,"v":2}"#),
            other => panic!("{other:?}"),
        }
    }
}
