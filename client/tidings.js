// The browser client: see README.md, "Connecting a dashboard".
export class TidingsClient {}
