from src.data.rosbag.convert import main

main()
