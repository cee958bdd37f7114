from lightning_blip.cli import main

main()
