pub(crate) mod faulty;
