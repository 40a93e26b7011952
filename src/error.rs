//! The crate-level [`Error`]: the data half's errors
//! ([`resnet_imagenet_data::error`], re-exported here) and the trainer's.

pub use resnet_imagenet_data::error::{
    FormatError, LoadError, LoadErrorKind, PackError, ReadError, panic_message,
};

/// The crate-level error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`FormatError`].
    #[error(transparent)]
    Format(#[from] FormatError),
    /// See [`ReadError`].
    #[error(transparent)]
    Read(#[from] ReadError),
    /// See [`PackError`].
    #[error(transparent)]
    Pack(#[from] PackError),
    /// See [`LoadError`].
    #[error(transparent)]
    Load(#[from] LoadError),
    /// See [`crate::decode::DecodeError`].
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),
    /// See [`crate::augment::AugmentError`].
    #[error(transparent)]
    Augment(#[from] crate::augment::AugmentError),
    /// See [`crate::pack::import::IdxError`].
    #[error(transparent)]
    Idx(#[from] crate::pack::import::IdxError),
    /// See [`crate::model::state::StateError`].
    #[error(transparent)]
    State(#[from] crate::model::state::StateError),
    /// See [`crate::model::zoo::ZooError`].
    #[error(transparent)]
    Zoo(#[from] crate::model::zoo::ZooError),
    /// See [`crate::train::TrainError`].
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// See [`crate::plot::PlotError`].
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// Another error of the data crate.
    #[error(transparent)]
    Data(Box<resnet_imagenet_data::Error>),
}

impl From<resnet_imagenet_data::Error> for Error {
    fn from(e: resnet_imagenet_data::Error) -> Self {
        use resnet_imagenet_data::Error as D;
        match e {
            D::Format(e) => Error::Format(e),
            D::Read(e) => Error::Read(e),
            D::Pack(e) => Error::Pack(e),
            D::Load(e) => Error::Load(e),
            D::Decode(e) => Error::Decode(e),
            D::Augment(e) => Error::Augment(e),
            D::Idx(e) => Error::Idx(e),
            // The data crate's enum is non-exhaustive; its message is kept.
            e => Error::Data(Box::new(e)),
        }
    }
}

/// `Result` with the crate-level [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage's error converts into the crate's with `?` and keeps its message.
    #[test]
    fn every_stage_error_is_wrapped_by_the_crate_error() {
        fn wrap(e: impl Into<Error> + std::fmt::Display) -> (String, Error) {
            (e.to_string(), e.into())
        }
        use crate::decode::DecodeError;
        let cases = [
            wrap(FormatError::BadMagic),
            wrap(ReadError::OutOfRange { index: 3, len: 2 }),
            wrap(DecodeError::Truncated),
            wrap(crate::augment::AugmentError::Decode(DecodeError::Truncated)),
            wrap(crate::model::zoo::ZooError::UnsupportedClasses(7)),
            wrap(crate::model::state::StateError::Io {
                path: "w.safetensors".into(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
            wrap(crate::pack::import::IdxError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            wrap(crate::plot::PlotError::Empty {
                path: "c.png".into(),
            }),
            wrap(crate::train::TrainError::Plot(
                crate::plot::PlotError::Empty {
                    path: "c.png".into(),
                },
            )),
        ];
        for (message, e) in &cases {
            assert_eq!(&e.to_string(), message);
        }
        assert!(matches!(cases[2].1, Error::Decode(_)));
        assert!(matches!(cases[4].1, Error::Zoo(_)));
        assert!(matches!(cases[8].1, Error::Train(_)));
    }
}
