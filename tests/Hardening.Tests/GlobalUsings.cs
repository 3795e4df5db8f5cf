global using IfcVdpa.VhostUser;
