//! `DebCache::from_env` honours ROS_CACHE_DIR, else `$HOME/.cache/ros`. Alone in its own test
//! binary because it changes the process environment.

use std::path::Path;
use xtask::fetch::DebCache;

#[test]
fn cache_dir_comes_from_ros_cache_dir_then_home() {
    std::env::set_var("ROS_CACHE_DIR", "/tmp/ros-cache-test");
    assert_eq!(
        DebCache::from_env().unwrap().dir(),
        Path::new("/tmp/ros-cache-test/debs")
    );
    assert_eq!(
        DebCache::from_env().unwrap().path_for("ab"),
        Path::new("/tmp/ros-cache-test/debs/ab.deb")
    );
    std::env::remove_var("ROS_CACHE_DIR");
    std::env::set_var("HOME", "/home/someone");
    assert_eq!(
        DebCache::from_env().unwrap().dir(),
        Path::new("/home/someone/.cache/ros/debs")
    );
    std::env::remove_var("HOME");
    assert!(DebCache::from_env().is_err());
}
