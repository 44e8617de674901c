from pipelines.driving_video.cli import main

main()
