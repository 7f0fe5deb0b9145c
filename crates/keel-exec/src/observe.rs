//! The single place where runs report to metrics. Without the `metrics`
//! feature (or without metrics configured) every hook is a no-op.

use std::time::Duration;

use crate::config::ParallelSettings;
#[cfg(feature = "metrics")]
use crate::metrics::ExecMetrics;
use crate::report::Status;

#[derive(Debug, Clone, Default)]
pub(crate) struct Observer {
    #[cfg(feature = "metrics")]
    metrics: Option<ExecMetrics>,
}

impl Observer {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn from_settings(settings: &ParallelSettings) -> Self {
        Observer {
            #[cfg(feature = "metrics")]
            metrics: settings.metrics.clone(),
        }
    }

    #[inline]
    pub(crate) fn item_started(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.item_started();
        }
    }

    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn items_started(&self, n: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.items_started(n);
        }
    }

    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn items_stopped(&self, n: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.items_stopped(n);
        }
    }

    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn item_finished(&self, status: Status, duration: Duration, was_running: bool) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.item_finished(status, duration, was_running);
        }
    }

    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn batch_finished(&self, status: Status) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.batch_finished(status);
        }
    }

    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn limit_changed(&self, limit: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.set_limit(limit);
        }
    }
}
