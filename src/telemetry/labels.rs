//! Metric label values, as types: a call site cannot misspell one, and each `ALL` list is what
//! the registry initialises, so every series exists from the first scrape.

/// Declares a label enum: its variants, their label text and `ALL`.
macro_rules! label {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, for initialising the metric's series.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

label! {
    /// How a message finished (label `outcome`).
    Outcome {
        /// Handled for the first time; its stream event is in the outbox.
        Handled => "handled",
        /// Already handled before (a redelivery): no new effects, no new event.
        Duplicate => "duplicate",
        DeadLettered => "dead_lettered",
        /// A message on one of the service's own output topics (pattern subscriptions only).
        Skipped => "skipped",
        /// Shutdown or a revoke came first; the offset must not advance.
        Abandoned => "abandoned",
    }
}

label! {
    /// The step that is retried after a failure (label `step`).
    RetryStep {
        Database => "database",
        Stream => "stream",
        DeadLetter => "dead_letter",
        Handler => "handler",
    }
}

label! {
    /// A stream publish attempt's result (label `result`).
    PublishResult {
        Ok => "ok",
        Error => "error",
    }
}

label! {
    /// A consumer group rebalance event (label `kind`).
    RebalanceKind {
        Assign => "assign",
        Revoke => "revoke",
        Error => "error",
    }
}
