from wpo.tasks.ifeval.prompts import main

main()
