use crate::Outcome;

/// Maps the result of a call to an [`Outcome`].
///
/// Implemented by every `Fn(&Result<T, E>) -> Outcome` closure and by the
/// stock classifiers in [`classify`]. The default everywhere in Keel is
/// [`classify::Default`]: `Ok` is a success, `Err` a failure.
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// Implemented by error types that know what they mean for reliability: an
/// open breaker is an overload with a retry-after, an HTTP 404 is neutral, a
/// timeout is a failure. [`classify::ByError`] uses it.
pub trait ErrorOutcome {
    /// The outcome this error stands for.
    fn outcome(&self) -> Outcome;
}

impl<E: ErrorOutcome + ?Sized> ErrorOutcome for Box<E> {
    fn outcome(&self) -> Outcome {
        (**self).outcome()
    }
}

/// Stock classifiers.
pub mod classify {
    use super::{Classify, ErrorOutcome};
    use crate::Outcome;

    /// `Ok` is a success, every `Err` a failure.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Default;

    impl<T, E> Classify<T, E> for Default {
        #[inline]
        fn classify(&self, result: &Result<T, E>) -> Outcome {
            match result {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            }
        }
    }

    /// `Ok` is a success; an `Err` is whatever the error says through
    /// [`ErrorOutcome`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct ByError;

    impl<T, E: ErrorOutcome> Classify<T, E> for ByError {
        #[inline]
        fn classify(&self, result: &Result<T, E>) -> Outcome {
            match result {
                Ok(_) => Outcome::Success,
                Err(e) => e.outcome(),
            }
        }
    }

    /// `Ok` is a success; an `Err` for which the predicate holds is a
    /// failure, any other `Err` is neutral (ignored). Built by [`on_error`].
    #[derive(Debug, Clone, Copy)]
    pub struct OnError<P> {
        predicate: P,
    }

    /// Counts only the errors `predicate` selects as failures; other errors
    /// are neutral.
    pub fn on_error<E, P>(predicate: P) -> OnError<P>
    where
        P: Fn(&E) -> bool,
    {
        OnError { predicate }
    }

    impl<T, E, P> Classify<T, E> for OnError<P>
    where
        P: Fn(&E) -> bool,
    {
        #[inline]
        fn classify(&self, result: &Result<T, E>) -> Outcome {
            match result {
                Ok(_) => Outcome::Success,
                Err(e) if (self.predicate)(e) => Outcome::Failure,
                Err(_) => Outcome::Neutral,
            }
        }
    }

    /// Maps only the error through a function; `Ok` is a success. Built by
    /// [`error_fn`].
    #[derive(Debug, Clone, Copy)]
    pub struct ErrorFn<F> {
        f: F,
    }

    /// Classifies errors with `f` (for instance an HTTP status mapping);
    /// `Ok` is a success.
    pub fn error_fn<E, F>(f: F) -> ErrorFn<F>
    where
        F: Fn(&E) -> Outcome,
    {
        ErrorFn { f }
    }

    impl<T, E, F> Classify<T, E> for ErrorFn<F>
    where
        F: Fn(&E) -> Outcome,
    {
        #[inline]
        fn classify(&self, result: &Result<T, E>) -> Outcome {
            match result {
                Ok(_) => Outcome::Success,
                Err(e) => (self.f)(e),
            }
        }
    }

    /// Wraps a closure over the whole result, for classifiers that also look
    /// at `Ok` values (an HTTP response whose status is 503).
    pub fn from_fn<T, E, F>(f: F) -> F
    where
        F: Fn(&Result<T, E>) -> Outcome,
    {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug)]
    struct Busy;
    impl ErrorOutcome for Busy {
        fn outcome(&self) -> Outcome {
            Outcome::overloaded_for(Duration::from_secs(2))
        }
    }

    #[test]
    fn default_classifier() {
        assert_eq!(
            classify::Default.classify(&Ok::<u8, ()>(1)),
            Outcome::Success
        );
        assert_eq!(
            classify::Default.classify(&Err::<u8, ()>(())),
            Outcome::Failure
        );
    }

    #[test]
    fn by_error_uses_the_error_s_own_outcome() {
        assert_eq!(
            classify::ByError.classify(&Err::<(), _>(Busy)),
            Outcome::overloaded_for(Duration::from_secs(2))
        );
        let boxed: Box<Busy> = Box::new(Busy);
        assert!(boxed.outcome().is_overloaded());
    }

    #[test]
    fn closures_and_error_functions() {
        let by_status = classify::error_fn(|status: &u16| match status {
            429 | 503 => Outcome::OVERLOADED,
            500..=599 => Outcome::Failure,
            _ => Outcome::Neutral,
        });
        assert_eq!(by_status.classify(&Err::<(), _>(404)), Outcome::Neutral);
        assert_eq!(by_status.classify(&Err::<(), _>(502)), Outcome::Failure);
        assert_eq!(by_status.classify(&Err::<(), _>(429)), Outcome::OVERLOADED);

        let whole = classify::from_fn(|r: &Result<u16, ()>| match r {
            Ok(503) => Outcome::OVERLOADED,
            Ok(_) => Outcome::Success,
            Err(()) => Outcome::Failure,
        });
        assert_eq!(whole.classify(&Ok(503)), Outcome::OVERLOADED);
        assert_eq!(whole.classify(&Ok(200)), Outcome::Success);
    }
}
