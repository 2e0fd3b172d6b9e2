//! The one place binding errors become Python exceptions: the core's error enums map
//! onto the hierarchy of `searchr1.errors`.

use pyo3::prelude::*;

use searchr1_core as core;

pyo3::import_exception!(searchr1.errors, InputError);
pyo3::import_exception!(searchr1.errors, PackError);
pyo3::import_exception!(searchr1.errors, CorpusError);
pyo3::import_exception!(searchr1.errors, IndexFormatError);

/// Every error a binding function can raise, mapped onto Python exceptions in one place.
pub(crate) enum Error {
    Tag(core::TagError),
    Pack(core::PackError),
    Index(core::IndexError),
    Py(PyErr),
}

impl From<core::IndexError> for Error {
    fn from(e: core::IndexError) -> Self {
        Error::Index(e)
    }
}

impl From<core::TagError> for Error {
    fn from(e: core::TagError) -> Self {
        Error::Tag(e)
    }
}

impl From<core::PackError> for Error {
    fn from(e: core::PackError) -> Self {
        Error::Pack(e)
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error::Py(e)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Tag(e) => InputError::new_err(e.to_string()),
            Error::Pack(e) => PackError::new_err(e.to_string()),
            Error::Index(e) => {
                use core::IndexError as E;
                let msg = e.to_string();
                match e {
                    E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                        pyo3::exceptions::PyFileNotFoundError::new_err(msg)
                    }
                    E::Io { .. } => pyo3::exceptions::PyOSError::new_err(msg),
                    E::Corpus(core::CorpusError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        pyo3::exceptions::PyFileNotFoundError::new_err(msg)
                    }
                    E::Corpus(core::CorpusError::Io { .. }) => pyo3::exceptions::PyOSError::new_err(msg),
                    E::Corpus(_) => CorpusError::new_err(msg),
                    E::Settings(_) => InputError::new_err(msg),
                    E::Corrupt(_) | E::Mismatch(_) | E::Tantivy(_) | E::Usearch(_) | E::Incomplete(_) => {
                        IndexFormatError::new_err(msg)
                    }
                    // A cancel with no Python exception kept for it (see index::Interrupt).
                    E::Cancelled => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
                }
            }
            Error::Py(e) => e,
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;
