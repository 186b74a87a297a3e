//! Glue between the generated WIT bindings and the [`Plugin`] trait. Not public API: used by
//! [`crate::export_plugin!`] and [`crate::testing::Instance`].

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::wit::switchyard::plugin::types as w;
use crate::{
    ConnectDecision, ConnectInfo, DeliverDecision, GroupContext, Identity, Level, Outgoing, Plugin,
    PublishDecision, SubscribeDecision, json,
};

#[doc(hidden)]
pub use crate::wit::__export_plugin_world as export_world;

thread_local! {
    /// The plugin value `init` created. Wasm is single-threaded, so this is the instance's state.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Implements the generated `Guest` trait for any [`Plugin`].
#[doc(hidden)]
pub struct Adapter<P>(PhantomData<P>);

/// Deserialize the binding's config text into `P::Config` and build the plugin from it.
///
/// The one place both the `init` export and [`crate::testing`] build a plugin, so a unit test
/// accepts and refuses exactly the configs the gateway would.
pub(crate) fn build<P: Plugin>(config: &str) -> Result<P, String> {
    P::init(json::parse_config(config)?)
}

fn with_plugin<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> R {
    INSTANCE.with_borrow_mut(|slot| {
        let plugin = slot
            .as_mut()
            .and_then(|p| p.downcast_mut::<P>())
            .expect("switchyard plugin hook called before a successful init");
        f(plugin)
    })
}

impl<P: Plugin> crate::wit::Guest for Adapter<P> {
    fn init(config: String) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        std::panic::set_hook(Box::new(|info| {
            crate::log(Level::Error, &format!("plugin panicked: {info}"), &[]);
        }));
        INSTANCE.set(None);
        let plugin = build::<P>(&config)?;
        INSTANCE.set(Some(Box::new(plugin)));
        Ok(())
    }

    fn on_connect(info: w::ConnectInfo) -> w::ConnectDecision {
        let info = ConnectInfo::from(info);
        with_plugin(|p: &mut P| p.on_connect(&info)).into()
    }

    fn on_subscribe(who: w::Identity, channel: String) -> w::SubscribeDecision {
        let who = Identity::from(who);
        with_plugin(|p: &mut P| p.on_subscribe(&who, &channel)).into()
    }

    fn on_publish(who: w::Identity, channel: String, data: String) -> w::PublishDecision {
        let who = Identity::from(who);
        with_plugin(|p: &mut P| p.on_publish(&who, &channel, &data)).into()
    }

    fn on_deliver(group: w::GroupContext, channel: String, data: String) -> w::DeliverDecision {
        let group = GroupContext::from(group);
        with_plugin(|p: &mut P| p.on_deliver(&group, &channel, &data)).into()
    }
}

// --- conversions between the generated types and the SDK's own -------------------------

impl From<w::Identity> for Identity {
    fn from(w: w::Identity) -> Self {
        Self {
            user: w.user,
            tenant: w.tenant,
            claims: w.claims,
        }
    }
}

impl From<Identity> for w::Identity {
    fn from(i: Identity) -> Self {
        Self {
            user: i.user,
            tenant: i.tenant,
            claims: i.claims,
        }
    }
}

impl From<w::ConnectInfo> for ConnectInfo {
    fn from(w: w::ConnectInfo) -> Self {
        Self {
            remote_addr: w.remote_addr,
            headers: w.headers,
            query: w.query,
            identity: w.identity.into(),
        }
    }
}

impl From<ConnectInfo> for w::ConnectInfo {
    fn from(i: ConnectInfo) -> Self {
        Self {
            remote_addr: i.remote_addr,
            headers: i.headers,
            query: i.query,
            identity: i.identity.into(),
        }
    }
}

impl From<ConnectDecision> for w::ConnectDecision {
    fn from(d: ConnectDecision) -> Self {
        match d {
            ConnectDecision::Accept => Self::Accept,
            ConnectDecision::Enrich(i) => Self::Enrich(i.into()),
            ConnectDecision::Reject(r) => Self::Reject(r),
        }
    }
}

impl From<w::ConnectDecision> for ConnectDecision {
    fn from(d: w::ConnectDecision) -> Self {
        match d {
            w::ConnectDecision::Accept => Self::Accept,
            w::ConnectDecision::Enrich(i) => Self::Enrich(i.into()),
            w::ConnectDecision::Reject(r) => Self::Reject(r),
        }
    }
}

impl From<SubscribeDecision> for w::SubscribeDecision {
    fn from(d: SubscribeDecision) -> Self {
        match d {
            SubscribeDecision::Allow => Self::Allow,
            SubscribeDecision::AllowInGroup(g) => Self::AllowInGroup(g),
            SubscribeDecision::Deny(r) => Self::Deny(r),
        }
    }
}

impl From<w::SubscribeDecision> for SubscribeDecision {
    fn from(d: w::SubscribeDecision) -> Self {
        match d {
            w::SubscribeDecision::Allow => Self::Allow,
            w::SubscribeDecision::AllowInGroup(g) => Self::AllowInGroup(g),
            w::SubscribeDecision::Deny(r) => Self::Deny(r),
        }
    }
}

impl From<PublishDecision> for w::PublishDecision {
    fn from(d: PublishDecision) -> Self {
        match d {
            PublishDecision::Pass => Self::Pass,
            PublishDecision::Forward(list) => Self::Forward(
                list.into_iter()
                    .map(|o| w::Outgoing {
                        channel: o.channel,
                        data: o.data,
                    })
                    .collect(),
            ),
            PublishDecision::Reject(r) => Self::Reject(r),
            PublishDecision::Drop => Self::Drop,
        }
    }
}

impl From<w::PublishDecision> for PublishDecision {
    fn from(d: w::PublishDecision) -> Self {
        match d {
            w::PublishDecision::Pass => Self::Pass,
            w::PublishDecision::Forward(list) => Self::Forward(
                list.into_iter()
                    .map(|o| Outgoing {
                        channel: o.channel,
                        data: o.data,
                    })
                    .collect(),
            ),
            w::PublishDecision::Reject(r) => Self::Reject(r),
            w::PublishDecision::Drop => Self::Drop,
        }
    }
}

impl From<w::GroupContext> for GroupContext {
    fn from(w: w::GroupContext) -> Self {
        Self {
            key: w.key,
            tenant: w.tenant,
        }
    }
}

impl From<GroupContext> for w::GroupContext {
    fn from(g: GroupContext) -> Self {
        Self {
            key: g.key,
            tenant: g.tenant,
        }
    }
}

impl From<DeliverDecision> for w::DeliverDecision {
    fn from(d: DeliverDecision) -> Self {
        match d {
            DeliverDecision::Deliver => Self::Deliver,
            DeliverDecision::Rewrite(s) => Self::Rewrite(s),
            DeliverDecision::Skip => Self::Skip,
        }
    }
}

impl From<w::DeliverDecision> for DeliverDecision {
    fn from(d: w::DeliverDecision) -> Self {
        match d {
            w::DeliverDecision::Deliver => Self::Deliver,
            w::DeliverDecision::Rewrite(s) => Self::Rewrite(s),
            w::DeliverDecision::Skip => Self::Skip,
        }
    }
}

impl From<Level> for w::Level {
    fn from(l: Level) -> Self {
        match l {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
        }
    }
}
