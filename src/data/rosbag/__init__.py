"""Raw CMHT ROS2 bags: reading them (`reader`) and converting them to the CMHT frame layout (`convert`)."""
