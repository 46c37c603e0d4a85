//! ros-tests
